#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge, when missing, for tests/test_slurm.py: the test starts its
# own one-node SLURM (munged, slurmctld, slurmd) in a temporary folder and stops it at the end;
# nothing here starts a daemon. Needs root (apt-get); `make test` calls it with --if-possible,
# which only warns where it cannot install them (the SLURM tests then skip, and say why).
set -euo pipefail
IF_POSSIBLE=${1:-}
if command -v munged >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
  && command -v sbatch >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  if [ "$IF_POSSIBLE" = --if-possible ]; then
    echo "[setup_slurm] warning: slurm-wlm and munge are not installed and cannot be without root and apt-get;" \
      "the SLURM tests will skip" >&2
    exit 0
  fi
  echo "error: slurm-wlm and munge are not installed; run as root: apt-get install -y slurm-wlm munge" >&2
  exit 1
fi
echo "[setup_slurm] installing Debian's slurm-wlm and munge"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
