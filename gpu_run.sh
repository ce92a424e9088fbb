set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD/convert PYTHONUNBUFFERED=1
ln -sfn ../../recipes convert/seqcls/recipes
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY'
import torch, time
torch.manual_seed(0)
T, H, KV, D = 18000, 16, 8, 128
qkv = torch.randn(T, (H + 2*KV)*D, device="cuda", dtype=torch.bfloat16)
q = qkv[:, :H*D].view(T, H, D); k = qkv[:, H*D:(H+KV)*D].view(T, KV, D); v = qkv[:, (H+KV)*D:].view(T, KV, D)
import numpy as np
lens = np.random.default_rng(0).integers(100, 300, size=80); lens[-1] += T - lens.sum()
cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device="cuda")
f = lambda a, b, c: torch.ops.aten._flash_attention_forward(a, b, c, cu, cu, int(lens.max()), int(lens.max()), 0.0, True, False, scale=D**-0.5)
ref = f(q.contiguous(), k.contiguous(), v.contiguous())
try:
    out = f(q, k, v)
    print("strided ok, max diff", (out[0].float() - ref[0].float()).abs().max().item(), "lse shape", tuple(out[1].shape))
except Exception as e:
    print("strided refused:", str(e).splitlines()[0])
for name, fn in [("contiguous copies", lambda: f(q.contiguous(), k.contiguous(), v.contiguous())), ("strided", lambda: f(q, k, v))]:
    try:
        for _ in range(3): fn()
        torch.cuda.synchronize(); s = time.perf_counter()
        for _ in range(50): fn()
        torch.cuda.synchronize(); print(name, f"{(time.perf_counter()-s)/50*1e3:.3f} ms")
    except Exception as e:
        print(name, "error", str(e).splitlines()[0])
PY
timeout 200 python3 -m pytest -q -x -m gpu -k "fused or flash_prefix" tests/test_runtime.py -p no:cacheprovider 2>&1 | tail -5 || true
mkdir -p /tmp/w
python3 scripts/profile_score.py --rerank --workdir /tmp/w --top 22 2>&1 | grep -v "Loading\|it/s" | tail -32
python3 scripts/profile_score.py --rerank --no-prefix --workdir /tmp/w --top 22 2>&1 | grep -v "Loading\|it/s" | tail -32
