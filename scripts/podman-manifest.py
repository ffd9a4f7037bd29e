#!/usr/bin/python3
"""Manifests of `podman export` tarballs, and their comparison (used by scripts/podman-debian.sh).

  podman-manifest.py manifest TAR > MANIFEST
      one tab-separated line per entry, sorted by path:
      path  type  mode  uid:gid  size  content  hard-link-group
      type: f (regular), d, l (symlink), c, b, p (fifo); mode: the 12 permission bits in octal;
      content: sha256 of a regular file, the target of a symlink, major:minor of a device, - else;
      size: of the data (a tar hard-link entry gets its group's size); hard-link-group: the
      sorted names of every entry that is the same file, comma-separated, - for a single name.
      mtimes are not recorded: two runs of the same steps never agree on them.

  podman-manifest.py compare A B LABEL [--content-exempt REGEX]... [--links-exempt REGEX]...
      prints one "ok: LABEL: ..." or "FAIL: LABEL: ..." line per aspect (paths, types, modes,
      owners, sizes and sha256, symlink targets, hard-link groups) with up to 12 indented
      differences under each FAIL. --content-exempt: size and sha256 of matching paths are not
      compared (their presence, type, mode and owner still are). --links-exempt: matching paths
      are left out of the hard-link groups on both sides. REGEX is matched (re.fullmatch) against
      the path, which starts with /.
"""
import hashlib
import re
import sys
import tarfile

TYPES = {
    tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.CONTTYPE: "f", tarfile.DIRTYPE: "d",
    tarfile.SYMTYPE: "l", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p",
    tarfile.LNKTYPE: "h",
}


def norm(name):
    name = name.strip("/")
    while name.startswith("./"):
        name = name[2:]
    if name in ("", "."):
        return "/"
    return "/" + name.rstrip("/")


def manifest(path):
    entries = {}
    parent = {}  # union-find over hard-link names

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    with tarfile.open(path, mode="r|*") as tar:
        for m in tar:
            name = norm(m.name)
            kind = TYPES.get(m.type, "?")
            content, size = "-", m.size if kind == "f" else 0
            if kind == "f":
                h = hashlib.sha256()
                f = tar.extractfile(m)
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                content = h.hexdigest()
            elif kind == "l":
                content = m.linkname
            elif kind in ("c", "b"):
                content = "%d:%d" % (m.devmajor, m.devminor)
            elif kind == "h":
                target = norm(m.linkname)
                parent[find(name)] = find(target)
            entries[name] = [kind, "%04o" % (m.mode & 0o7777), "%d:%d" % (m.uid, m.gid), size, content]
    groups = {}
    for name in parent:
        groups.setdefault(find(name), set()).add(name)
    for root, names in list(groups.items()):
        names.add(root)
        for n in names:
            groups[n] = names
    out = []
    for name in sorted(entries):
        kind, mode, owner, size, content = entries[name]
        group = groups.get(name)
        if kind == "h":
            src = entries.get(find(name))
            if src is not None:
                kind, size, content = src[0], src[3], src[4]
                # The tar header of a link entry may carry its own mode/owner; the file's are the
                # source's (one inode).
                mode, owner = src[1], src[2]
        out.append("\t".join([name, kind, mode, owner, str(size), content,
                              ",".join(sorted(group)) if group else "-"]))
    return out


def load(path):
    rows = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 7:
                rows[parts[0]] = parts
    return rows


def compare(a_path, b_path, label, content_exempt, links_exempt):
    a, b = load(a_path), load(b_path)

    def exempt(regexes, p):
        return any(r.fullmatch(p) for r in regexes)

    def report(aspect, diffs, extra=""):
        if diffs:
            print("FAIL: %s: %s differ in %d entries%s" % (label, aspect, len(diffs), extra))
            for d in diffs[:12]:
                print("    " + d)
            if len(diffs) > 12:
                print("    ... %d more" % (len(diffs) - 12))
        else:
            print("ok: %s: same %s%s" % (label, aspect, extra))

    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    report("paths", ["only in A: " + p for p in only_a] + ["only in B: " + p for p in only_b],
           " (%d and %d entries)" % (len(a), len(b)))
    common = sorted(set(a) & set(b))
    fields = [("types", 1), ("modes", 2), ("owners", 3)]
    for aspect, i in fields:
        report(aspect, ["%s: %s vs %s" % (p, a[p][i], b[p][i]) for p in common if a[p][i] != b[p][i]])
    sized = [p for p in common if a[p][1] == "f" == b[p][1]]
    report("sizes and sha256",
           ["%s: %s %s vs %s %s" % (p, a[p][4], a[p][5][:16], b[p][4], b[p][5][:16])
            for p in sized if not exempt(content_exempt, p) and a[p][4:6] != b[p][4:6]],
           " (%d regular files, %d exempt by the list)"
           % (len(sized), sum(1 for p in sized if exempt(content_exempt, p))))
    report("symlink targets", ["%s: %s vs %s" % (p, a[p][5], b[p][5]) for p in common
                               if a[p][1] == "l" == b[p][1] and a[p][5] != b[p][5]])

    def group(row):
        if row[6] == "-":
            return "-"
        names = [n for n in row[6].split(",") if not exempt(links_exempt, n)]
        return ",".join(names) if len(names) > 1 else "-"

    linked = [p for p in common if not exempt(links_exempt, p)]
    report("hard-link groups", ["%s: {%s} vs {%s}" % (p, group(a[p]), group(b[p]))
                                for p in linked if group(a[p]) != group(b[p])],
           " (%d names in groups)" % sum(1 for p in linked if group(a[p]) != "-"))


def main(argv):
    sys.stdout.reconfigure(errors="surrogateescape")
    if len(argv) >= 2 and argv[0] == "manifest":
        sys.stdout.write("".join(line + "\n" for line in manifest(argv[1])))
        return 0
    if len(argv) >= 4 and argv[0] == "compare":
        content_exempt, links_exempt = [], []
        rest = argv[4:]
        while rest:
            opt = rest.pop(0)
            if opt == "--content-exempt" and rest:
                content_exempt.append(re.compile(rest.pop(0)))
            elif opt == "--links-exempt" and rest:
                links_exempt.append(re.compile(rest.pop(0)))
            else:
                print("unknown argument: " + opt, file=sys.stderr)
                return 2
        compare(argv[1], argv[2], argv[3], content_exempt, links_exempt)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
