//! A hostile lower layer's `overlay.redirect` with ".." components ("/../outside" from a
//! layer root) must not lead the lookup out of the layer: the merged directory never
//! shows what lies outside the branches. (The kernel refuses such redirects; stratafs
//! answers EACCES for them, as the kernel does for "." and "..".)

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;

use common::{Scratch, Stack, Strata};
use stratafs::sys::{self, xattr};

#[test]
fn redirects_with_dot_dot_never_leave_the_layer() {
    let s = Scratch::new("redirect");
    let outside = s.dir("outside");
    fs::write(outside.join("secret"), b"outside every branch").unwrap();
    let (l1, l2, m) = (s.dir("l1"), s.dir("l2"), s.dir("m"));
    fs::create_dir(l1.join("d")).unwrap();
    fs::create_dir(l2.join("x")).unwrap();
    fs::write(l2.join("x/inside"), b"in l2").unwrap();
    let l1fd = sys::open_host_dir(&l1).unwrap();
    let mut checked = 0;
    for redirect in [
        "/../outside",
        "/x/../../outside",
        "/./x",
        "/../../../../..",
        "..",
        ".",
    ] {
        let v = CString::new(redirect).unwrap();
        xattr::set(
            l1fd.as_fd(),
            c"d",
            c"trusted.overlay.redirect",
            v.as_bytes(),
            0,
        )
        .unwrap();
        let mnt = Strata::mount(
            &Stack {
                lowers: vec![&l1, &l2],
                upper: None,
            },
            "",
            &m,
        );
        match fs::read_dir(m.join("d")) {
            Ok(rd) => {
                let names: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
                assert!(names.is_empty(), "redirect {redirect}: d shows {names:?}");
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{redirect}: {e}"),
        }
        assert!(fs::read(m.join("d/secret")).is_err(), "redirect {redirect}");
        // A valid redirect still works.
        assert_eq!(fs::read(m.join("x/inside")).unwrap(), b"in l2");
        drop(mnt);
        checked += 1;
    }
    xattr::set(l1fd.as_fd(), c"d", c"trusted.overlay.redirect", b"/x", 0).unwrap();
    let _mnt = Strata::mount(
        &Stack {
            lowers: vec![&l1, &l2],
            upper: None,
        },
        "",
        &m,
    );
    assert_eq!(
        fs::read(m.join("d/inside")).unwrap(),
        b"in l2",
        "valid redirect followed"
    );
    assert_eq!(checked, 6);
}
