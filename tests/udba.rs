//! Changes made directly to the branches while mounted (the aufs "udba" question).
//! stratafs keeps no copy of branch data or listings: every lookup, getattr, readdir and
//! open goes to the branches, and only the kernel caches entries and attributes, for
//! `timeout=` seconds (here 1). So once the timeout has passed, a lower or upper file
//! rewritten, added or removed behind the daemon's back shows through the mount with its
//! new size and content, a removed one gives ENOENT, a file replaced by a directory shows
//! as a directory, and nothing crashes. A file that was already open keeps reading the
//! object it opened (like any open file whose name is removed).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use common::{Scratch, Stack, Strata};

fn listing(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn branches_changed_underneath_show_after_the_timeout() {
    let s = Scratch::new("udba");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("lf"), b"old lower").unwrap();
    fs::write(l.join("lgone"), b"lower, removed later").unwrap();
    fs::write(l.join("lopen"), b"lower, open while removed").unwrap();
    fs::write(l.join("ltype"), b"lower file, a dir later").unwrap();
    fs::create_dir(l.join("ld")).unwrap();
    fs::write(l.join("ld/inner"), b"inner").unwrap();
    fs::write(u.join("uf"), b"old upper").unwrap();
    // A merged directory (in both layers) whose lower part alone changes: its own
    // attributes (the upper's) stay the same.
    fs::create_dir(l.join("md")).unwrap();
    fs::create_dir(u.join("md")).unwrap();
    fs::write(l.join("md/oldlower"), b"o").unwrap();
    fs::write(u.join("md/up"), b"u").unwrap();
    fs::write(u.join("ugone"), b"upper, removed later").unwrap();
    fs::write(u.join("ss"), b"AAAA").unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "timeout=1", &m);
    // Fill the kernel's caches: entries, attributes, pages, the listing.
    for n in ["lf", "lgone", "ltype", "uf", "ugone", "ld/inner"] {
        fs::read(m.join(n)).unwrap();
    }
    let before = listing(&m);
    assert_eq!(listing(&m.join("md")), ["oldlower", "up"]);
    assert_eq!(fs::read(m.join("ss")).unwrap(), b"AAAA");
    let mut open = fs::File::open(m.join("lopen")).unwrap();

    // Behind the daemon's back.
    fs::write(l.join("lf"), b"new lower content, longer").unwrap();
    fs::write(l.join("ladded"), b"added to the lower").unwrap();
    fs::remove_file(l.join("lgone")).unwrap();
    fs::remove_file(l.join("lopen")).unwrap();
    fs::remove_file(l.join("ltype")).unwrap();
    fs::create_dir(l.join("ltype")).unwrap();
    fs::remove_dir_all(l.join("ld")).unwrap();
    {
        // Rewritten in place (same inode), as an editor without rename would.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(u.join("uf"))
            .unwrap();
        f.write_all(b"new upper content, much longer than before")
            .unwrap();
    }
    fs::write(u.join("uadded"), b"added to the upper").unwrap();
    fs::write(l.join("md/newlower"), b"n").unwrap();
    fs::remove_file(l.join("md/oldlower")).unwrap();
    fs::remove_file(u.join("ugone")).unwrap();
    fs::write(u.join("ss"), b"BBBB").unwrap();

    // Past the attribute and entry timeout (a kernel clock, not load dependent).
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        fs::read(m.join("lf")).unwrap(),
        b"new lower content, longer",
        "rewritten lower file"
    );
    assert_eq!(fs::metadata(m.join("lf")).unwrap().len(), 25);
    assert_eq!(
        fs::read(m.join("uf")).unwrap(),
        b"new upper content, much longer than before",
        "upper file rewritten in place"
    );
    assert_eq!(fs::metadata(m.join("uf")).unwrap().len(), 42);
    assert_eq!(fs::read(m.join("ladded")).unwrap(), b"added to the lower");
    assert_eq!(fs::read(m.join("uadded")).unwrap(), b"added to the upper");
    for gone in ["lgone", "ugone", "lopen", "ld/inner", "ld"] {
        let e = fs::metadata(m.join(gone)).expect_err(gone);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{gone}: {e:?}");
    }
    match fs::symlink_metadata(m.join("ltype")) {
        Ok(md) => assert!(md.is_dir(), "ltype is a directory now"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "ltype: {e:?}"),
    }
    assert_eq!(
        listing(&m.join("md")),
        ["newlower", "up"],
        "merged dir listing after its lower part changed"
    );
    assert_eq!(
        fs::read(m.join("ss")).unwrap(),
        b"BBBB",
        "same-size rewrite"
    );
    let after = listing(&m);
    assert_ne!(before, after);
    assert_eq!(
        after,
        ["ladded", "lf", "ltype", "md", "ss", "uadded", "uf"],
        "listing after the changes"
    );
    // The open file still reads what it opened.
    let mut b = String::new();
    open.seek(SeekFrom::Start(0)).unwrap();
    open.read_to_string(&mut b).unwrap();
    assert_eq!(b, "lower, open while removed");
    drop(open);
    // Copy-up takes the lower file as it is now.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("lf"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(
        fs::read(u.join("lf")).unwrap(),
        b"new lower content, longer+"
    );
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
}
