#!/bin/sh
# Installs mesh-agent on a host without dpkg, as the .deb would: the binary in $PREFIX/bin, the
# unit (pointed at it), the default config (kept if present), the `mesh-agent` system user, the
# directories of /etc/mesh-agent, the sysctl limits, example policies and dashboards; then enables
# and starts the service when systemd runs.
#
#   sudo deploy/install.sh [BINARY]          BINARY: default target/x86_64-unknown-linux-musl/release/mesh-agent
#   sudo deploy/install.sh --uninstall       keeps /etc/mesh-agent and /var/lib/mesh-agent
#
# DESTDIR=/some/root installs into a root without starting anything (what the tests do).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
unit_dir="$DESTDIR/etc/systemd/system"

say() { printf 'install.sh: %s\n' "$*"; }
fail() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

if [ "${1:-}" = "--uninstall" ]; then
    if systemd_running; then
        systemctl disable --now mesh-agent.service || true
    fi
    rm -f "$unit_dir/mesh-agent.service" "$DESTDIR$PREFIX/bin/mesh-agent" \
        "$DESTDIR/etc/sysctl.d/60-mesh-agent.conf"
    rm -rf "$DESTDIR$PREFIX/share/mesh-agent"
    if systemd_running; then systemctl daemon-reload; fi
    say "removed; /etc/mesh-agent and /var/lib/mesh-agent are kept"
    exit 0
fi

binary=${1:-$repo/target/x86_64-unknown-linux-musl/release/mesh-agent}
[ -x "$binary" ] || fail "no executable at $binary (build it: cargo build --release --target x86_64-unknown-linux-musl -p mesh-agent)"
"$binary" --version >/dev/null || fail "$binary does not run on this host"
[ "$(id -u)" -eq 0 ] || [ -n "$DESTDIR" ] || fail "run as root (or set DESTDIR)"

install -d "$DESTDIR$PREFIX/bin" "$unit_dir" "$DESTDIR/etc/mesh-agent/policies" \
    "$DESTDIR/etc/sysctl.d" "$DESTDIR$PREFIX/share/mesh-agent"
install -m 0755 "$binary" "$DESTDIR$PREFIX/bin/mesh-agent"
sed "s#/usr/bin/mesh-agent#$PREFIX/bin/mesh-agent#g" "$here/mesh-agent.service" \
    >"$unit_dir/mesh-agent.service"
chmod 0644 "$unit_dir/mesh-agent.service"
if [ -e "$DESTDIR/etc/mesh-agent/agent.toml" ]; then
    say "keeping the existing /etc/mesh-agent/agent.toml"
else
    install -m 0644 "$here/agent.toml" "$DESTDIR/etc/mesh-agent/agent.toml"
fi
install -m 0644 "$here/agent.example.toml" "$here/alerts.yml" "$here/grafana-dashboard.json" \
    "$DESTDIR$PREFIX/share/mesh-agent/"
rm -rf "$DESTDIR$PREFIX/share/mesh-agent/policies"
cp -R "$repo/policies" "$DESTDIR$PREFIX/share/mesh-agent/policies"
install -m 0644 "$here/sysctl/60-mesh-agent.conf" "$DESTDIR/etc/sysctl.d/"

# The service's user: DynamicUser= takes a static user of the unit's name when there is one, so
# token files and certificates can be given to its group.
if [ -z "$DESTDIR" ]; then
    getent group mesh-agent >/dev/null || groupadd --system mesh-agent
    getent passwd mesh-agent >/dev/null || useradd --system --gid mesh-agent \
        --no-create-home --home-dir /var/lib/mesh-agent --shell /usr/sbin/nologin mesh-agent
    install -d -m 0750 -g mesh-agent /etc/mesh-agent/tokens /etc/mesh-agent/tls
else
    install -d -m 0750 "$DESTDIR/etc/mesh-agent/tokens" "$DESTDIR/etc/mesh-agent/tls"
fi

"$DESTDIR$PREFIX/bin/mesh-agent" check-config "$DESTDIR/etc/mesh-agent/agent.toml" >/dev/null \
    || fail "the config does not check: $DESTDIR/etc/mesh-agent/agent.toml"

if systemd_running; then
    sysctl -q -p /etc/sysctl.d/60-mesh-agent.conf || say "could not apply the sysctl limits now"
    systemctl daemon-reload
    systemctl enable mesh-agent.service
    # restart, not start: an upgrade must replace the running binary.
    systemctl restart mesh-agent.service
    say "mesh-agent installed and (re)started: systemctl status mesh-agent; mesh-agent status"
else
    say "mesh-agent installed into ${DESTDIR:-/}; enable it with: systemctl enable --now mesh-agent"
fi
