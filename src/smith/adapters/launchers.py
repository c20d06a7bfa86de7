"""The two ways to build a sandbox from one ``Layout`` (the policy): bubblewrap, or util-linux's ``unshare``.

``unshare`` is on every Linux; bubblewrap often is not. Both give the same sandbox: fresh user, mount, pid, net
(unless ``network``), ipc, uts and cgroup namespaces; a tmpfs root holding only the layout's mounts, /dev with
null, zero, full, random, urandom and tty, /proc of its own pid namespace, a sized tmpfs /tmp and /run; the
environment the layout gives and nothing else; every capability dropped (bounding set too), no_new_privs.

With ``unshare`` the setup runs as a small ``sh`` script inside the new namespaces (as the namespace's root):
mount the root, pivot into it, detach the host's tree, remount / read-only, then drop every capability with
``setpriv`` before the guest agent starts. ``--kill-child`` ties the sandbox to its ``unshare`` process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """A sandbox's contents, the policy both launchers share. ``mounts``: ``(kind, source, target)`` in order,
    kind ``ro`` (read-only bind), ``rw`` (bind), ``file`` (a read-only bind of a file over one the root has) or
    ``symlink`` (source is the link's target). Besides those:
    /dev (a few device nodes), /proc (its own pid namespace), /tmp (a tmpfs of ``tmp_bytes``), /run; the
    environment is ``env`` and nothing else; no capabilities; only loopback unless ``network``."""

    mounts: list[tuple[str, str, str]]
    hostname: str
    tmp_bytes: int | None
    network: bool
    env: dict[str, str]
    argv: list[str]
    new_root: str  # an empty host directory the unshare launcher mounts the new root on


def bwrap_argv(plan: Layout, bwrap: str) -> list[str]:
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]
    if not plan.network:
        argv.append("--unshare-net")
    flags = {"ro": "--ro-bind", "rw": "--bind", "symlink": "--symlink", "file": "--ro-bind"}
    mounts = [m for m in plan.mounts if m[2] not in ("/work", "/smith-guest")]
    for kind, source, target in mounts:
        argv += [flags[kind], source, target]
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += [*(["--size", str(plan.tmp_bytes)] if plan.tmp_bytes else []), "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for kind, source, target in plan.mounts:
        if target in ("/work", "/smith-guest"):
            argv += [flags[kind], source, target]
    argv += ["--chdir", "/work", "--hostname", plan.hostname, "--clearenv"]
    for name, value in plan.env.items():
        argv += ["--setenv", name, value]
    return [*argv, "--cap-drop", "ALL", "--", *plan.argv]


# Runs inside the new namespaces as their root. Arguments: new_root hostname tmp_size network, then
# `kind source target` triples up to `--`, then the command (which starts with `env -i NAME=value...`).
SETUP = r"""
set -eu
R=$1; hostname=$2; tmp_size=$3; network=$4; shift 4
mount -t tmpfs -o mode=755,nosuid,nodev smith-root "$R"
mkdir "$R/dev" "$R/proc" "$R/tmp" "$R/run"
while [ "$1" != -- ]; do
    kind=$1; src=$2; dst=$R$3; shift 3
    mkdir -p "$(dirname "$dst")"
    case $kind in
        symlink) ln -s "$src" "$dst" ;;
        ro) mkdir -p "$dst"; mount --rbind -o ro "$src" "$dst" ;;
        rw) mkdir -p "$dst"; mount --bind "$src" "$dst" ;;
        file) mount --bind "$src" "$dst"; mount -o remount,bind,ro "$dst" ;;
    esac
done
shift
mount -t tmpfs -o mode=755,nosuid smith-dev "$R/dev"
for n in null zero full random urandom tty; do
    touch "$R/dev/$n"
    mount --bind "/dev/$n" "$R/dev/$n"
done
for n in stdin:0 stdout:1 stderr:2; do ln -s "/proc/self/fd/${n#*:}" "$R/dev/${n%%:*}"; done
ln -s /proc/self/fd "$R/dev/fd"
mkdir "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev smith-shm "$R/dev/shm"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t tmpfs -o "mode=1777,nosuid,nodev${tmp_size:+,size=$tmp_size}" smith-tmp "$R/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev smith-run "$R/run"
hostname "$hostname" 2>/dev/null || true  # (the hostname package; /proc/sys is not ours to write)
[ "$network" = host ] || ip link set lo up 2>/dev/null || true
cd "$R"
mkdir .old
pivot_root . .old
umount -l /.old
rmdir /.old
mount -o remount,bind,ro /
cd /work
read -r _ uid _ < /proc/self/uid_map
read -r _ gid _ < /proc/self/gid_map
# The job runs as the uid it has outside (as under bwrap), in a user namespace nested in this one: a uid that
# is not 0 there has no capabilities after exec, and no_new_privs keeps setuid and file capabilities from
# granting any. Where unshare cannot map a user (util-linux < 2.36), it stays this namespace's root with every
# capability dropped, the bounding set too. Either way the sh left as pid 1 reaps orphans.
if [ "$uid" != 0 ] && unshare --user --map-user="$uid" --map-group="$gid" true 2>/dev/null; then
    exec unshare --user --map-user="$uid" --map-group="$gid" -- \
        setpriv --no-new-privs --inh-caps=-all -- /bin/sh -c '"$@"; exit $?' sh "$@"
fi
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- /bin/sh -c '"$@"; exit $?' sh "$@"
"""


def unshare_argv(plan: Layout, unshare: str) -> list[str]:
    argv = [unshare, "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "--ipc", "--uts"]
    argv += ["--cgroup", *([] if plan.network else ["--net"]), "--", "/bin/sh", "-c", SETUP, "smith-sandbox"]
    argv += [plan.new_root, plan.hostname, str(plan.tmp_bytes or ""), "host" if plan.network else "none"]
    for mount in plan.mounts:
        argv += list(mount)
    return [*argv, "--", "env", "-i", *(f"{name}={value}" for name, value in plan.env.items()), *plan.argv]
