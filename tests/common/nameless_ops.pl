# Operations on open files whose name is gone (tests/nameless_copy_up.rs, tests/rootless.rs).
#   perl -e "$(cat nameless_ops.pl)" MOUNT
# For each operation and each way of losing the name (unlink; another file renamed over
# it): open the lower file MOUNT/{f,g}_OP read-only, remove its name, do OP through the
# open file (or through /proc/PID/fd, as a process holding only that fd can), close.
# Prints one line per case with every step's outcome (ok / error ERRNO / rc), then the
# names left in MOUNT with their content.
use strict;
use warnings;
$^F = 255;    # fds survive exec, for the tools below that reach a file through /proc/PID/fd
my ($m) = @ARGV;
sub res { return $_[0] ? "ok" : "error " . ($! + 0) }
sub quiet { my $pid = fork(); if (!$pid) { open(STDERR, ">", "/dev/null"); exec(@_) or exit 127 } waitpid($pid, 0); return $? >> 8 }
for my $how (qw(unlink rename)) {
    for my $op (qw(close utime chmod chown xattr write truncate)) {
        my $name = "$m/" . ($how eq "unlink" ? "f" : "g") . "_$op";
        open(my $fh, "<", $name) or die "open $name: $!";
        if ($how eq "unlink") {
            unlink($name) or die "unlink $name: $!";
        } else {
            open(my $n, ">", "$m/new") or die "create: $!";
            print $n "replacement\n";
            close($n) or die "close new: $!";
            rename("$m/new", $name) or die "rename: $!";
        }
        my $p = "/proc/$$/fd/" . fileno($fh);
        my @log;
        if ($op eq "close") {
            # nothing but the close
        } elsif ($op eq "utime") {
            push @log, "futimens " . res(utime(1000000000, 1000000000, $fh));
            push @log, "mtime " . (stat($fh))[9];
        } elsif ($op eq "chmod") {
            push @log, "fchmod " . res(chmod(0600, $fh));
            push @log, sprintf("mode %o", (stat($fh))[2] & 07777);
        } elsif ($op eq "chown") {
            push @log, "fchown " . res(chown($<, $( + 0, $fh));
        } elsif ($op eq "xattr") {
            push @log, "setxattr rc " . quiet("setfattr", "-n", "user.t", "-v", "v1", $p);
            my $v = `getfattr --only-values -n user.t $p 2>/dev/null`;
            push @log, "value '$v'";
            push @log, "removexattr rc " . quiet("setfattr", "-x", "user.t", $p);
        } else {
            my $w;
            push @log, "reopen read-write " . res(open($w, "+<", $p));
            if ($w) {
                if ($op eq "write") {
                    push @log, "write " . res(syswrite($w, "new data\n"));
                    push @log, "fsync " . res($w->sync);
                    push @log, "fallocate rc "
                      . quiet("fallocate", "-o", "0", "-l", "65536", "/proc/$$/fd/" . fileno($w));
                } else {
                    push @log, "ftruncate " . res(truncate($w, 3));
                }
                push @log, "size " . (stat($fh))[7];
                push @log, "close read-write " . res(close($w));
            }
            seek($fh, 0, 0);
            my $got = "";
            sysread($fh, $got, 9);
            push @log, "read through the first fd '$got'";
        }
        push @log, "close " . res(close($fh));
        my $line = join("; ", @log);
        $line =~ s/\n/\\n/g;
        print "$how $op: $line\n";
    }
}
opendir(my $r, $m) or die "opendir: $!";
for my $n (sort grep { !/^\.\.?$/ } readdir($r)) {
    open(my $f, "<", "$m/$n") or die "open $n: $!";
    local $/;
    my $c = <$f>;
    $c =~ s/\n/\\n/g;
    print "left $n: $c\n";
}
