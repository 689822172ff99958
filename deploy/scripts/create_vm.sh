#!/usr/bin/env bash
# Create a GCP VM with a GPU, copy this project onto it and install it with the GPU extras.
#
# Every setting is an environment variable with a default; see usage() below or --help.
# Needs the Google Cloud CLI (gcloud), logged in ('gcloud auth login') with a project set
# ('gcloud config set project ...' or PROJECT=...), and GPU quota in ZONE.
set -euo pipefail

VM_NAME="${VM_NAME:-product-classifier}"
PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-central1-a}"
MACHINE_TYPE="${MACHINE_TYPE:-n1-standard-8}"
# Without ":" an ACCELERATOR set to empty stays empty, for machine types with built-in GPUs.
ACCELERATOR="${ACCELERATOR-type=nvidia-tesla-t4,count=1}"
IMAGE_FAMILY="${IMAGE_FAMILY:-common-cu129-ubuntu-2404-nvidia-580}"
IMAGE_PROJECT="${IMAGE_PROJECT:-deeplearning-platform-release}"
DISK_SIZE="${DISK_SIZE:-200GB}"
SCOPES="${SCOPES:-storage-rw,logging-write,monitoring-write}"
SPOT="${SPOT:-0}"
REPO_URL="${REPO_URL:-}"
REMOTE_DIR="${REMOTE_DIR:-product-image-classifier}"
SSH_ATTEMPTS="${SSH_ATTEMPTS:-30}"
SSH_WAIT_S="${SSH_WAIT_S:-10}"

usage() {
    cat <<USAGE
Usage: deploy/scripts/create_vm.sh [--help]

Creates the VM, waits until SSH works, copies the project (the committed files of this
checkout, or a clone of REPO_URL) into ~/REMOTE_DIR, runs 'make install EXTRAS=gpu'
there, and prints how to reach TensorBoard and the server through an SSH tunnel.

Settings (environment variables, current value in brackets):
  VM_NAME        instance name [$VM_NAME]
  PROJECT        GCP project; empty uses gcloud's configured project [$PROJECT]
  ZONE           zone with GPU quota [$ZONE]
  MACHINE_TYPE   machine type [$MACHINE_TYPE]
  ACCELERATOR    --accelerator value; empty for machine types with built-in GPUs
                 such as a2-highgpu-1g or g2-standard-8 [$ACCELERATOR]
  IMAGE_FAMILY   Deep Learning VM image family; Ubuntu 24.04 with Python 3.12 and the
                 NVIDIA driver [$IMAGE_FAMILY]
  IMAGE_PROJECT  project of the image family [$IMAGE_PROJECT]
  DISK_SIZE      boot disk size [$DISK_SIZE]
  SCOPES         service account scopes [$SCOPES]
  SPOT           1 creates a Spot VM: cheaper, but it can be stopped at any time [$SPOT]
  REPO_URL       git URL to clone on the VM; empty copies this checkout's HEAD [$REPO_URL]
  REMOTE_DIR     project folder under the VM user's home [$REMOTE_DIR]
  SSH_ATTEMPTS, SSH_WAIT_S  how long to wait for SSH after creation [$SSH_ATTEMPTS x $SSH_WAIT_S s]
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "create_vm.sh: unexpected argument '$1'; settings are environment variables, see --help" >&2
    exit 2
fi
if ! command -v gcloud >/dev/null 2>&1; then
    echo "create_vm.sh: gcloud not found on PATH; install the Google Cloud CLI" \
        "(https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'" >&2
    exit 127
fi

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Quoted for the remote shell, which runs the --command strings below.
remote_dir="$(printf '%q' "$REMOTE_DIR")"
gcloud_flags=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then
    gcloud_flags+=(--project="$PROJECT")
fi

# 1. Create the VM. GPU VMs cannot live-migrate, so host maintenance stops them
#    (--maintenance-policy=TERMINATE). The Deep Learning VM image installs the NVIDIA
#    driver on first boot when the metadata requests it.
create_flags=(
    --machine-type="$MACHINE_TYPE"
    --maintenance-policy=TERMINATE
    --image-family="$IMAGE_FAMILY"
    --image-project="$IMAGE_PROJECT"
    --boot-disk-size="$DISK_SIZE"
    --scopes="$SCOPES"
    --metadata=install-nvidia-driver=True
)
if [[ -n "$ACCELERATOR" ]]; then
    create_flags+=(--accelerator="$ACCELERATOR")
fi
if [[ "$SPOT" == "1" ]]; then
    create_flags+=(--provisioning-model=SPOT --instance-termination-action=STOP)
fi
echo "create_vm.sh: creating $VM_NAME ($MACHINE_TYPE, ${ACCELERATOR:-built-in GPUs}) in $ZONE"
gcloud compute instances create "$VM_NAME" "${gcloud_flags[@]}" "${create_flags[@]}"

# 2. Wait until SSH accepts connections. The first boot also installs the driver, which
#    takes minutes.
attempt=1
until gcloud compute ssh "$VM_NAME" "${gcloud_flags[@]}" --command=true; do
    if ((attempt >= SSH_ATTEMPTS)); then
        echo "create_vm.sh: SSH to $VM_NAME failed $SSH_ATTEMPTS times; check the VM's" \
            "serial console (gcloud compute instances get-serial-port-output $VM_NAME)" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep "$SSH_WAIT_S"
done

# 3. Put the project on the VM: a clone of REPO_URL, or an archive of this checkout's
#    committed files (uncommitted changes stay behind).
if [[ -n "$REPO_URL" ]]; then
    gcloud compute ssh "$VM_NAME" "${gcloud_flags[@]}" \
        --command="git clone $(printf '%q' "$REPO_URL") $remote_dir"
else
    archive_dir="$(mktemp -d)"
    trap 'rm -rf "$archive_dir"' EXIT
    git -C "$project_root" archive --format=tar.gz --output="$archive_dir/project.tar.gz" HEAD
    gcloud compute scp "${gcloud_flags[@]}" "$archive_dir/project.tar.gz" "$VM_NAME:project.tar.gz"
    gcloud compute ssh "$VM_NAME" "${gcloud_flags[@]}" \
        --command="mkdir -p $remote_dir && tar -xzf project.tar.gz -C $remote_dir && rm project.tar.gz"
fi

# 4. Install: make and the venv module from apt, then the project with TensorFlow's CUDA wheels.
gcloud compute ssh "$VM_NAME" "${gcloud_flags[@]}" \
    --command="sudo apt-get update -qq && sudo apt-get install -y -qq make python3-venv git \
&& cd $remote_dir && make install EXTRAS=gpu"

# 5. How to reach the services on the VM, which listen on 127.0.0.1 only.
project_flag=""
if [[ -n "$PROJECT" ]]; then
    project_flag=" --project=$PROJECT"
fi
cat <<NEXT

create_vm.sh: $VM_NAME is ready; the project is in ~/$REMOTE_DIR on it.

Open a shell there:
  gcloud compute ssh $VM_NAME --zone=$ZONE$project_flag

Forward TensorBoard (make tensorboard, port 6006) and the server (make serve, port 8501)
to this machine, then open http://127.0.0.1:6006 and http://127.0.0.1:8501:
  gcloud compute ssh $VM_NAME --zone=$ZONE$project_flag -- -N -L 6006:127.0.0.1:6006 -L 8501:127.0.0.1:8501

Stop the VM when it is idle, because a GPU VM is billed while it runs:
  gcloud compute instances stop $VM_NAME --zone=$ZONE$project_flag
NEXT
