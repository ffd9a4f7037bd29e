//! How the daemon ends. After `umount` it exits 0 as soon as the kernel drops the FUSE
//! connection, even right after a burst of concurrent IO. The kernel drops it only when the
//! last mount of the superblock goes, in every mount namespace: a process that ran
//! `unshare -m` while the mount existed holds a copy, and the daemon keeps serving that
//! copy after our `umount` (as the kernel overlayfs and fuse-overlayfs do). SIGTERM must
//! still end such a daemon, with status 0, and must not touch a mount that is not its own.
//!
//! Runs as root. The namespace holder detaches every other FUSE and overlay mount from its
//! copy at once, so it never keeps another test's (or another user's) mount alive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{namespaces_holding, Scratch, Stack, Strata};

/// Concurrent IO on the mount: new files written and fsynced, lower files appended to
/// (copy-up), directories made and renamed, files renamed and removed.
fn burst(m: &Path, tag: &str, threads: usize, files: usize) {
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let m = m.to_path_buf();
            let tag = tag.to_string();
            std::thread::spawn(move || {
                let d = m.join(format!("{tag}d{t}"));
                std::fs::create_dir(&d).unwrap();
                for i in 0..files {
                    let p = d.join(format!("f{i}"));
                    let f = std::fs::File::create(&p).unwrap();
                    f.write_all_at(&vec![t as u8; 64 * 1024], 0).unwrap();
                    f.sync_all().unwrap();
                    let mut low = std::fs::OpenOptions::new()
                        .append(true)
                        .open(m.join(format!("low{}", (t * files + i) % 16)))
                        .unwrap();
                    low.write_all(b"more\n").unwrap();
                    std::fs::rename(&p, d.join(format!("g{i}"))).unwrap();
                    if i % 2 == 0 {
                        std::fs::remove_file(d.join(format!("g{i}"))).unwrap();
                    }
                }
                std::fs::rename(&d, m.join(format!("{tag}e{t}"))).unwrap();
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn layers(s: &Scratch) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    for i in 0..16 {
        std::fs::write(l.join(format!("low{i}")), format!("lower {i}\n")).unwrap();
    }
    (l, u, w, m)
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn umount_after_concurrent_io_ends_the_daemon_at_once() {
    let s = Scratch::new("exit-burst");
    let (l, u, w, m) = layers(&s);
    let mut latencies = Vec::new();
    for round in 0..5 {
        let mut mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
        burst(&m, &format!("r{round}"), 8, 20);
        let dev = mnt.dev().unwrap().to_string();
        let t0 = Instant::now();
        let st = Command::new("umount").arg(&m).status().unwrap();
        assert!(st.success(), "round {round}: umount");
        let exit = mnt.wait_exit_within(Duration::from_secs(5));
        let took = t0.elapsed();
        let holders = namespaces_holding(&dev);
        if exit.is_none() && !holders.is_empty() {
            // Not the daemon's doing: see the next test.
            eprintln!("round {round}: mount held by other namespaces: {holders:?}");
            continue;
        }
        assert!(
            exit.is_some_and(|s| s.success()),
            "round {round}: the daemon exits 0 within 5 s of the umount, got {exit:?}; threads:\n{}",
            common::task_states(mnt.pid())
        );
        latencies.push(took.as_secs_f64());
    }
    println!("exit latency after umount (s): {latencies:.3?}");
}

/// `unshare -m` holding a copy of the mount table made while our mount existed; every
/// other FUSE and overlay mount is detached from the copy before it reports ready.
struct NamespaceHolder(Child);

impl NamespaceHolder {
    fn start(keep_dev: &str) -> NamespaceHolder {
        let script = format!(
            "awk '{{t=\"\"; for (i = 7; i <= NF; i++) if ($i == \"-\") {{ t = $(i+1); break }} }} \
             (t ~ /^fuse/ || t == \"overlay\") && $3 != \"{keep_dev}\" {{ print $5 }}' \
             /proc/self/mountinfo | tac | while read -r p; do umount -l -- \"$(printf '%b' \"$p\")\" 2>/dev/null; done; \
             echo ready; exec sleep 120"
        );
        let mut c = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        NamespaceHolder(c)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Runs `cmd` in the holder's mount namespace.
    fn run(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid(), "-m", "--"])
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for NamespaceHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn sigterm_ends_a_daemon_whose_mount_another_namespace_holds() {
    let s = Scratch::new("exit-ns");
    let (l, u, w, m) = layers(&s);
    let mut mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let dev = mnt.dev().unwrap().to_string();
    let holder = NamespaceHolder::start(&dev);
    let mp = m.to_str().unwrap();
    assert!(
        namespaces_holding(&dev)
            .iter()
            .any(|h| h.starts_with(&format!("pid {} ", holder.pid()))),
        "the holder has a copy of the mount"
    );
    burst(&m, "", 4, 5);
    assert!(Command::new("umount").arg(&m).status().unwrap().success());
    // The copy is a live mount of the same filesystem: the daemon keeps serving it.
    assert!(
        mnt.wait_exit_within(Duration::from_secs(1)).is_none(),
        "the daemon serves the other namespace's copy after our umount"
    );
    let o = holder.run(&["cat", &format!("{mp}/low3")]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("lower 3\nmore\n"),
        "the copy still reads: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A new mount on the same path: the old daemon's SIGTERM must leave it alone.
    let (l2, u2, w2) = (s.dir("l2"), s.dir("u2"), s.dir("w2"));
    std::fs::write(l2.join("other"), b"second mount\n").unwrap();
    let second = Strata::mount(&Stack::one(&l2, &u2, &w2), "", &m);
    let t0 = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &mnt.pid().to_string()])
        .status();
    let st = mnt.wait_exit_within(Duration::from_secs(6));
    println!(
        "SIGTERM with the mount held elsewhere: exit {st:?} after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        st.is_some_and(|s| s.success()),
        "SIGTERM ends the daemon with status 0 within 6 s, got {st:?}; threads:\n{}",
        common::task_states(mnt.pid())
    );
    // Its connection is gone: the holder's copy answers ENOTCONN now.
    let o = holder.run(&["stat", mp]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not connected"),
        "the copy is disconnected: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The second mount on the same path is still there and serving.
    assert_eq!(
        std::fs::read(m.join("other")).unwrap(),
        b"second mount\n",
        "the later mount on the same path survives the old daemon's SIGTERM"
    );
    let st2 = second.unmount();
    assert!(st2.is_some_and(|s| s.success()));
}
