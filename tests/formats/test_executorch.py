"""ExecuTorch export: a tiny herd model written as a .pte and run by ExecuTorch's own runtime gives eager's logits,
for a prefill and then for decoding one token per call through the program's KV cache."""

import pytest
import torch

from herd.errors import CheckpointError
from herd.formats import Checkpoint, load_model, read_checkpoint, write_checkpoint
from herd.model import RopeScaling, build_model, get_preset

pytest.importorskip("executorch.runtime", reason="the executorch extra is not installed")

from executorch.runtime import Runtime

from herd.formats.executorch import export_pte

# Tied embeddings and the 3.1 RoPE scaling: the parts of the Llama 3 family the export must carry over.
ARGS = get_preset("tiny").replace(vocab_size=256, tie_embeddings=True, rope_scaling=RopeScaling(factor=8.0))


@pytest.mark.slow  # about 20 s: torch.export and ExecuTorch's lowering passes, even for a tiny model
def test_a_pte_prefills_and_decodes_like_the_eager_model(tmp_path) -> None:
    model = build_model(ARGS, device="cpu", init=False)
    model.init_weights()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    write_checkpoint(tmp_path / "hf", Checkpoint(args=ARGS, state_dict=sd, format="hf", path=tmp_path), "hf")

    pte = export_pte(tmp_path / "hf", tmp_path / "model.pte", max_seq_len=32)
    program = Runtime.get().load_program(pte)
    assert program.load_method("get_max_seq_len").execute([])[0] == 32
    assert program.load_method("get_vocab_size").execute([])[0] == 256

    tokens = torch.randint(0, ARGS.vocab_size, (1, 12))
    with torch.no_grad():
        eager = load_model(read_checkpoint(tmp_path / "hf", dtype=torch.float32))(tokens)
    forward = program.load_method("forward")
    prefill = forward.execute([tokens[:, :8], torch.tensor([0])])[0]
    torch.testing.assert_close(prefill, eager[:, :8], atol=1e-4, rtol=1e-4)
    for t in range(8, 12):  # one token per call, attending to the cache the calls before it filled
        step = forward.execute([tokens[:, t : t + 1], torch.tensor([t])])[0]
        torch.testing.assert_close(step[:, 0], eager[:, t], atol=1e-4, rtol=1e-4)


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        export_pte(tmp_path / "missing", tmp_path / "model.pte")
