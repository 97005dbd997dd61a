#!/usr/bin/env bash
# A Ray cluster across machines: one head, N workers, the datastore folder on storage every node mounts at the
# same path (NFS, Lustre, or object storage through a POSIX mount such as s3fs / gcsfuse / mountpoint-s3).
# Why shared: the driver stages passages into the shards' doc stores, the encoder actors read their chunks
# from there, and the shard-finishing tasks (any node) write the shard folders there.
#
#   on the head:     bash recipes/ray/multi-node.sh head
#   on each worker:  bash recipes/ray/multi-node.sh worker HEAD_IP
#   then, anywhere:  bash recipes/ray/multi-node.sh build HEAD_IP /shared/corpus /shared/datastores/big
#                    bash recipes/ray/multi-node.sh serve HEAD_IP /shared/datastores/big
#
# Every node needs the same Python environment (pip install 'dretriever[ray]') and the model at the same name
# or path (a Hugging Face name cached on each node, or a folder on the shared storage): an encoder actor whose
# model weights differ from the driver's stops the build (the fingerprint is checked).
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0
PORT=6379
case "${1:?head | worker | build | serve}" in
  head)
    # No CPUs for tasks on the head: it runs the driver, GCS and (when serving) the HTTP proxy.
    ray start --head --port $PORT --num-cpus 0 --disable-usage-stats ;;
  worker)
    # Each worker offers its GPUs (one encoder actor per GPU) or 2 logical CPUs per core.
    ray start --address "${2:?head ip}:$PORT" --num-cpus $((2 * $(nproc))) ;;
  build)
    # 1B passages: many shards (each shard one search unit; ~30-60M passages per shard keeps IVF training,
    # finishing and a replica's memory within one node); an IVF-PQ factory trained once on a sample.
    dretriever datastore build --sources "${3:?corpus}" --output "${4:?datastore folder}" --shards 32 \
        --chunking words --factory "IVF65536,PQ48" --train_sample 4000000 --keep_vectors float16 \
        --engine ray --address "${2:?head ip}:$PORT" ;;
  serve)
    # One deployment per shard group; a group's replicas hold only its shards (memory-mapped).
    dretriever serve "${3:?datastore folder}" --engine ray --address "${2:?head ip}:$PORT" --host 0.0.0.0 \
        --shard_groups 8 ;;
  *) echo "usage: $0 head | worker HEAD_IP | build HEAD_IP CORPUS OUT | serve HEAD_IP OUT" >&2; exit 2 ;;
esac
