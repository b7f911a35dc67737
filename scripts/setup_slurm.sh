#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge, when missing, for tests/test_slurm.py: the test starts its
# own one-node SLURM (munged, slurmctld, slurmd) in a temporary folder and stops it at the end;
# nothing here starts a daemon. Needs root (apt-get). .ci/run calls it.
set -euo pipefail
if command -v munged >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
  && command -v sbatch >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: slurm-wlm and munge are not installed; run as root: apt-get install -y slurm-wlm munge" >&2
  exit 1
fi
echo "[setup_slurm] installing Debian's slurm-wlm and munge"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
