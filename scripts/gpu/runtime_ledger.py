"""On a GPU node: `attention()` refuses a configuration class the vetting ledger says failed here.

The ledger's fingerprints come from `fa4doctor check`'s view of the node (NVML's GPU name and
driver, the package scan); the runtime reads the same facts in the training process (torch's GPU
name, NVML's driver). This writes one failing backward entry under the fingerprint `check`
computes, then calls `attention()` on CUDA tensors: training must fall back with `smoke_failed`,
inference (forward only) must still run on FA4.

    python scripts/gpu/runtime_ledger.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    folder = Path(tempfile.mkdtemp())
    ledger_path, snapshot = folder / "ledger.json", folder / "node.json"
    os.environ["FA4DOCTOR_LEDGER"] = str(ledger_path)
    with open(snapshot, "w") as handle:
        subprocess.run([sys.executable, "-m", "fa4doctor", "check", "--json", "--no-imports"], stdout=handle)

    import torch

    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import dispatcher as runtime, local_env
    from fa4doctor.names import BackendName
    from fa4doctor.dispatch.vetting import fingerprint
    from fa4doctor.environment import LedgerEntry, load_environment
    from fa4doctor.probe import ledger

    fa4 = BackendName.FA4
    probed = load_environment(snapshot)
    print(f"check:   gpu {probed.gpu(0).name!r}, driver {probed.driver.driver_version}, "
          f"torch {probed.torch.version}, fa4 {probed.backend(fa4).version} "
          f"deps {dict(probed.backend(fa4).dependencies)}")
    ledger.record([LedgerEntry(backend=fa4, fingerprint=fingerprint(fa4, probed, probed.gpu(0)),
                               case="synthetic:bf16-d128-h4-s256-causal", dtype="bf16", head_dim_qk=128,
                               head_dim_v=128, attn_mask_type="causal", window=False, direction="bwd",
                               outcome="wrong_result", detail="written by scripts/gpu/runtime_ledger.py")],
                  ledger_path)
    q, k, v = (torch.randn(1, 256, 4, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    attention(q, k, v, attn_mask_type="causal").sum().backward()
    seen = local_env.environment(need_gpus=True)
    print(f"runtime: gpu {seen.gpu(0).name!r}, driver {seen.driver.driver_version}, torch {seen.torch.version}, "
          f"fa4 {seen.backend(fa4).version} deps {dict(seen.backend(fa4).dependencies)}")
    same = fingerprint(fa4, seen, seen.gpu(0)) == fingerprint(fa4, probed, probed.gpu(0))
    train = [p.decision for p in runtime._plans.values()][-1]
    print(f"fingerprints equal: {same}")
    print(f"training call:  chosen {train.chosen.value}; fa4: "
          + "; ".join(str(r) for r in train.reasons_for(fa4)))
    with torch.no_grad():
        attention(q, k, v, attn_mask_type="causal")
    infer = [p.decision for p in runtime._plans.values()][-1]
    print(f"inference call: chosen {infer.chosen.value}")
    ok = same and train.chosen is not fa4 and infer.chosen is fa4 and \
        [r.code.value for r in train.reasons_for(fa4)] == ["smoke_failed"]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
