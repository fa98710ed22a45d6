#!/usr/bin/env bash
# A real Slurm cluster on this machine: runs a job as a 4-shard job array made by `supervisor export slurm`,
# preempts one array task midway (scontrol requeue: SIGTERM, then the task runs again with --resume), merges the
# shards with `supervisor merge`, and checks the merged results against a single-machine run and the known value.
#
# Usage: scripts/slurm-test.sh [SUPERVISOR]   (default: target/release/supervisor)
# With SLURM_TEST_KEEP=DIR, the work folder (job file, sbatch script, task logs, results) is copied to DIR.
#
# It starts munged (as the munge user, on a private socket), slurmctld and slurmd directly (no systemd), with a
# slurm.conf in a temporary folder pointed to by SLURM_CONF: one node on 127.0.0.1 with this machine's CPUs.
# Every daemon it started is stopped by its pid on exit, also on failure. Needs root and the Debian packages
# slurmctld slurmd slurm-client munge (.ci/run installs them); without them it says SKIPPED loudly and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

supervisor=$(realpath "${1:-target/release/supervisor}")
shards=4

skip() {
    printf '\n%s\n' "################################################################################" >&2
    printf '### SKIPPED: the Slurm cluster test did not run: %s\n' "$*" >&2
    printf '%s\n\n' "################################################################################" >&2
    exit 0
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
log() { printf '[slurm-test %s] %s\n' "$(date +%T)" "$*"; }

[[ -x $supervisor ]] || fail "no supervisor executable at $supervisor (build it first)"
((EUID == 0)) || skip "it must run as root (to start munged as the munge user and slurmd)"
for tool in munged slurmctld slurmd sbatch sinfo scontrol squeue runuser; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (apt-get install -y slurmctld slurmd slurm-client munge)"
done
id munge >/dev/null 2>&1 || skip "there is no munge user (the munge package creates it)"

tmp=$(mktemp -d /tmp/slurm-test.XXXXXX)
chmod 755 "$tmp"
pids=()

# Stops every daemon this script started (by the pid it recorded), then removes the temporary folder.
cleanup() {
    local status=$?
    set +e
    if [[ -n ${SLURM_CONF:-} ]] && ((${#pids[@]})); then
        scancel --quiet --user=root >/dev/null 2>&1
    fi
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "daemon $pid did not stop within 10 s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    if ((status != 0)); then
        for file in "$tmp"/slurmctld.log "$tmp"/slurmd.log "$tmp"/work/slurm-*.out; do
            [[ -f $file ]] && { echo "---- $file (last 40 lines)" >&2; tail -n 40 "$file" >&2; }
        done
    fi
    if [[ -n ${SLURM_TEST_KEEP:-} ]]; then
        mkdir -p "$SLURM_TEST_KEEP" && cp -r "$tmp/work/." "$SLURM_TEST_KEEP/"
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Records the pid in a daemon's pid file (waiting for the daemon to write it).
remember_pid() {
    local file=$1 pid
    for _ in $(seq 200); do
        if [[ -s $file ]]; then
            pid=$(tr -d '[:space:]' <"$file")
            if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                pids+=("$pid")
                return 0
            fi
        fi
        sleep 0.05
    done
    fail "no live pid in $file"
}

log "munged on a private socket"
install -d -o munge -g munge -m 700 "$tmp/munge"
key=/etc/munge/munge.key
if [[ ! -s $key ]]; then
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then
        runuser -u munge -- mungekey --create --keyfile="$key"
    else
        runuser -u munge -- create-munge-key
    fi
fi
runuser -u munge -- munged --force --key-file="$key" --socket="$tmp/munge/socket" \
    --pid-file="$tmp/munge/munged.pid" --seed-file="$tmp/munge/seed" --log-file="$tmp/munge/munged.log"
remember_pid "$tmp/munge/munged.pid"

log "slurm.conf in $tmp"
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/work"
host=$(hostname -s)
cpus=$(nproc)
cat >"$tmp/slurm.conf" <<EOF
ClusterName=citest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=26817
SlurmdPort=26818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=ci NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus State=UNKNOWN
PartitionName=ci Nodes=ci Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$tmp/slurm.conf

log "slurmctld and slurmd"
slurmctld -i
remember_pid "$tmp/slurmctld.pid"
slurmd -N ci
remember_pid "$tmp/slurmd.pid"
for _ in $(seq 600); do
    state=$(sinfo -h -n ci -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.1
done
[[ $state == idle ]] || fail "the node is '$state', not idle, after 60 s"
log "node ci is idle ($cpus CPUs)"

# π(2·10⁹) = 98222287 in 1000 items of 2·10⁶; each shard holds a second or two of work for one worker.
work=$tmp/work
cat >"$work/primes.toml" <<EOF
name = "slurm-primes"
[input]
range = { start = 0, end = 2_000_000_000, chunk = 2_000_000 }
[task]
builtin = "count-primes"
[output]
results = "results/primes.jsonl"
reduce = "sum"
EOF
expected=98222287

"$supervisor" export slurm "$work/primes.toml" --shards "$shards" --cpus-per-task 1 --time 10:00 >"$work/primes.sbatch"
echo "---- the exported sbatch script"
cat "$work/primes.sbatch"
echo "----"

log "sbatch --wait: $shards array tasks, 1 CPU each"
(cd "$work" && sbatch --wait --parsable "$work/primes.sbatch" >"$work/sbatch.out") &
sbatch_pid=$!
for _ in $(seq 200); do
    [[ -s $work/sbatch.out ]] && break
    sleep 0.05
done
job=$(cut -d';' -f1 <"$work/sbatch.out")
[[ -n $job ]] || fail "sbatch printed no job id"
log "job array $job submitted"

# Preempt shard 3 midway: requeue sends its processes SIGTERM and puts the task back in the queue. The
# supervisor stops gracefully and keeps its journal; the task's second run continues it with --resume.
victim=3
journal=$work/results/primes.shard-0003-of-0004.jsonl.journal
for _ in $(seq 2400); do
    if [[ -f $journal ]] && (($(wc -l <"$journal") > 20)); then break; fi
    # The task ended (or failed) without getting there: no point waiting.
    [[ -n $(squeue -h -j "${job}_$victim" -o %T 2>/dev/null) ]] || break
    sleep 0.05
done
[[ -f $journal ]] && (($(wc -l <"$journal") > 20)) ||
    fail "shard $victim's journal never had 20 records before the task ended (too fast to preempt, or it failed)"
log "requeue ${job}_$victim with $(($(wc -l <"$journal") - 1)) records in its journal"
scontrol requeue "${job}_$victim"
# Slurm holds a requeued job back until a begin time some time ahead; once it is pending again, let it start now.
for _ in $(seq 600); do
    [[ $(squeue -h -j "${job}_$victim" -o %T 2>/dev/null) == PENDING ]] && break
    sleep 0.1
done
scontrol update jobid="${job}_$victim" StartTime=now
log "${job}_$victim is pending again: $(squeue -h -j "${job}_$victim" -o '%T %r')"

status=0
wait "$sbatch_pid" || status=$?
((status == 0)) || fail "sbatch --wait exited with $status"
log "every array task ended"
for task in $(seq 0 $((shards - 1))); do
    out="$work/slurm-slurm-primes-${job}_$task.out"
    [[ -f $out ]] || fail "no log $out"
    grep -q "shard $task/$shards: items" "$out" || fail "task $task does not say which shard it ran ($out)"
    grep -q "on 1 worker$" "$out" || fail "task $task did not run 1 worker (SLURM_CPUS_PER_TASK=1)"
done
victim_log="$work/slurm-slurm-primes-${job}_$victim.out"
grep -q "SIGTERM received" "$victim_log" || fail "the preempted task never saw SIGTERM"
grep -q "stopped by SIGTERM" "$victim_log" || fail "the preempted task did not stop gracefully"
resumed=$(sed -n 's/^resumed: \([0-9]*\) items.*/\1/p' "$victim_log" | tail -n 1)
[[ -n $resumed ]] && ((resumed > 0)) || fail "the requeued task resumed nothing"
log "shard $victim was preempted and resumed $resumed items recorded before the SIGTERM"
echo "---- the preempted task's log ($victim_log)"
cat "$victim_log"
echo "----"

log "supervisor merge"
summary=$("$supervisor" merge --json "$work/primes.toml")
echo "$summary"
merged=$(sed -n 's/.*"reduced":\([0-9]*\).*/\1/p' <<<"$summary")
[[ $merged == "$expected" ]] || fail "merged sum is '$merged', π(2·10⁹) is $expected"

log "single-machine run to compare"
"$supervisor" run --quiet --json --results "$work/single.jsonl" "$work/primes.toml" >"$work/single.json"
single=$(sed -n 's/.*"reduced":\([0-9]*\).*/\1/p' "$work/single.json")
[[ $single == "$expected" ]] || fail "single-machine sum is '$single'"
# Same items with the same values, in the same order (pid and time differ).
strip() { sed 's/"attempts":.*"input"/"input"/' "$1"; }
cmp <(strip "$work/results/primes.jsonl") <(strip "$work/single.jsonl") ||
    fail "the merged results differ from the single-machine run"
records=$(wc -l <"$work/results/primes.jsonl")
((records == 1000)) || fail "$records merged records, expected 1000"
log "ok: $records merged records equal the single-machine run; π(2·10⁹) = $merged"
