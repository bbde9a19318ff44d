#!/bin/sh
# Shared first step of both images: make any Debian-like base usable for pip.
#  - The official python image has python and pip: nothing to add, pip installs system-wide as before.
#  - A bare Debian base (e.g. one made with debootstrap where Docker Hub is out of reach) gets python3 and
#    a venv from apt; PATH (set in the Dockerfiles) puts /opt/venv/bin first, so `pip`/`python` are the venv's.
#  - EXTRA_CA_CERTS (PEM text, build arg) is for a TLS-intercepting proxy or a private mirror: added to
#    the system store and pip is told to use that store (pip's own bundle would not know the CA).
set -eu
pkgs="curl ca-certificates"
command -v python3 >/dev/null 2>&1 || pkgs="$pkgs python3 python3-venv"
apt-get update
apt-get install -y --no-install-recommends $pkgs
rm -rf /var/lib/apt/lists/*
if [ -n "${EXTRA_CA_CERTS:-}" ]; then
    # one certificate per file: update-ca-certificates hashes each file as a single certificate
    printf '%s\n' "$EXTRA_CA_CERTS" | awk '/BEGIN CERTIFICATE/ {n++} n {print > ("/usr/local/share/ca-certificates/extra-" n ".crt")}'
    update-ca-certificates >/dev/null
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
fi
if ! command -v pip >/dev/null 2>&1; then
    python3 -m venv /opt/venv
fi
python3 --version
pip --version
