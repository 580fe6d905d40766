"""Same weights, same input, two torch/torchvision versions: does the forward give the same output?

Tells a fingerprint change that comes from the weights a seed draws from one that comes from the
arithmetic (reports/upgrades/torch-2.9.1-to-torch-2.14.1/README.md):

    BASE_VENV/bin/python .ci/same-weights.py save convnext_tiny swin_t   # under the base versions
    NEW_VENV/bin/python .ci/same-weights.py load convnext_tiny swin_t    # under the new ones

save: build each torchvision model at seed 0, keep its state dict, output and weight digest in
/tmp/wx; load: build it here, say whether this side's own seed-0 weights differ, load the saved
state dict and compare the output with the saved one."""
import hashlib, sys, torch, torchvision
from conformance.zoo.specs import resolve_model, build_model
mode, names = sys.argv[1], sys.argv[2:]
torch.use_deterministic_algorithms(True)
for name in names:
    spec = resolve_model(f"torchvision:{name}")
    model = build_model(spec=spec, seed=0).eval()
    digest = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in model.state_dict().values() if t.dtype.is_floating_point)).hexdigest()[:12]
    x = torch.randn(1, *spec.input_shape[1:], generator=torch.Generator().manual_seed(0))
    if mode == "save":
        with torch.no_grad():
            out = model(x)
        torch.save({"state": model.state_dict(), "out": out, "digest": digest}, f"/tmp/wx/{name}.pt")
        print(name, "saved", digest)
    else:
        saved = torch.load(f"/tmp/wx/{name}.pt")
        model.load_state_dict(saved["state"])
        with torch.no_grad():
            out = model(x)
        err = (out - saved["out"]).abs().max().item() / max(saved["out"].pow(2).mean().sqrt().item(), 1e-30)
        print(f"{name}: seed-0 weights {'identical' if digest == saved['digest'] else 'differ'}; "
              f"with the same weights the output differs by {err:.2e} of its scale (bitwise {torch.equal(out, saved['out'])})")
