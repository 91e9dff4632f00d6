"""The `herd` command line, run the way a user runs it (in-process `main`, and the console script)."""

import json
import subprocess
import sys

import pytest
import torch

from herd.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("name", "billions"), [("llama3.1-405b", 405), ("llama3-8b", 8.0), ("llama3.1-8b", 8.0)])
def test_model_info_sizes_match_meta(capsys, name, billions) -> None:
    code, out, _ = run(capsys, "model", "info", name, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["params"] / 1e9 == pytest.approx(billions, rel=0.01)
    assert info["flops_per_token"]["train"] > 6 * info["params"] * 0.9


def test_model_info_lists_presets_and_reads_checkpoints(capsys) -> None:
    code, out, _ = run(capsys, "model", "info")
    assert code == 0 and "llama3.2-1b" in out and "smollm2-135m-instruct" in out
    code, out, _ = run(capsys, "model", "info", "smollm2-135m-instruct", "--json")
    info = json.loads(out)
    assert info["args"]["dim"] == 576 and info["args"]["tie_embeddings"]
    assert info["params"] == pytest.approx(134.5e6, rel=0.01)


def test_generate_json_is_deterministic_for_a_seed(capsys) -> None:
    argv = ["generate", "-p", "Once upon a time", "-n", "8", "--json", "--temperature", "0.9", "--seed", "3"]
    first = json.loads(run(capsys, *argv)[1])
    second = json.loads(run(capsys, *argv)[1])
    assert first == second
    assert len(first["tokens"]) == 8 and isinstance(first["text"], str)


def test_chat_reads_piped_stdin_with_reset(monkeypatch, capsys) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n/reset\nHi\n/exit\nnever read\n"))
    code, out, _ = run(capsys, "chat", "-n", "12")
    assert code == 0
    assert "Paris" in out and "(history cleared)" in out and "never read" not in out
    assert out.count("tokens/s") == 2


def test_generate_and_chat_decode_with_quantized_weights(monkeypatch, capsys) -> None:
    import io

    from herd.inference import engine
    from herd.inference.decode_model import DecodeModel

    models = []

    class RecordingEngine(engine.Engine):  # the real engine; it only notes the model it was given
        def __init__(self, model, *args, **kwargs) -> None:
            models.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(engine, "Engine", RecordingEngine)
    code, out, _ = run(capsys, "generate", "-p", "The capital of France is", "-n", "6", "--quant", "int8", "--json")
    result = json.loads(out)
    assert code == 0 and result["text"].strip() and len(result["tokens"]) <= 6
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    code, out, _ = run(capsys, "chat", "-n", "4", "--quant", "int4", "--dtype", "bf16")
    assert code == 0 and "(gguf, bfloat16, quant int4, loaded in" in out.splitlines()[0] and "you> Hi" in out
    assert [(type(m), m.quant, m.dtype) for m in models] == [(DecodeModel, "int8", torch.float32),
                                                             (DecodeModel, "int4", torch.bfloat16)]  # fmt: skip
    assert models[0].layers[0].wqkv.packed.kind == "int8"  # quantized weights, not a float copy


def test_generate_with_prompt_lookup_speculation_gives_the_greedy_text(capsys) -> None:
    prompt = ["-p", "Repeat after me: red green blue, red green blue, red green blue,", "-n", "12", "--quant", "int4"]
    code, plain, _ = run(capsys, "generate", *prompt, "--json")
    assert code == 0
    code, spec, _ = run(capsys, "generate", *prompt, "--json", "--speculate", "prompt-lookup")
    assert code == 0 and json.loads(spec)["tokens"] == json.loads(plain)["tokens"]
    code, _, err = run(capsys, "generate", *prompt, "--speculate", "prompt-lookup")
    assert code == 0 and "drafts accepted" in err
    code, _, err = run(capsys, "generate", "-p", "x", "--speculate", "draft")
    assert code == 1 and "--speculate draft needs --draft-model" in err


def test_generate_rejects_an_unknown_quant_or_dtype_in_one_line(capsys) -> None:
    code, _, err = run(capsys, "generate", "-p", "x", "--quant", "int3")
    assert code == 1 and err == "herd: error: unknown --quant 'int3'; choose one of none, int8, int4\n"
    code, _, err = run(capsys, "generate", "-p", "x", "--dtype", "float16")
    assert code == 1 and err.count("\n") == 1 and "float16" in err


def test_errors_are_one_line_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "generate", "--model", "/no/such/model", "-p", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "herd: error: model '/no/such/model': no such file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_convert_gguf_to_hf_to_meta_keeps_logits_and_output(tmp_path, capsys) -> None:
    from herd.formats import load_model, read_checkpoint, resolve_model_path

    assert run(capsys, "convert", "smollm2-135m-instruct", str(tmp_path / "hf"), "--to", "hf")[0] == 0
    assert run(capsys, "convert", str(tmp_path / "hf"), str(tmp_path / "meta"), "--to", "meta")[0] == 0
    tokens = torch.randint(0, 49152, (1, 24))
    with torch.no_grad():
        reference = load_model(read_checkpoint(resolve_model_path(None)))(tokens)
        for d in ("hf", "meta"):
            assert torch.equal(load_model(read_checkpoint(tmp_path / d))(tokens), reference), d
    outputs = set()
    for model in ("smollm2-135m-instruct", str(tmp_path / "hf"), str(tmp_path / "meta")):
        outputs.add(run(capsys, "generate", "--model", model, "-p", "The capital of France is", "-n", "6", "--json")[1])
    assert len(outputs) == 1


def test_transformers_loads_converted_hf_directory(tmp_path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from herd.formats import load_pretrained

    assert run(capsys, "convert", "smollm2-135m-instruct", str(tmp_path / "hf"), "--to", "hf")[0] == 0
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ref_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = load_pretrained(str(tmp_path / "hf"))
    text = "Hello there, how are you today?"
    ids = ours.tokenizer.encode(text)
    assert ref_tok(text, add_special_tokens=False)["input_ids"] == ids
    chat = [{"role": "user", "content": "Hi there"}]
    assert ours.tokenizer.encode_chat(chat) == list(
        ref_tok.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
    )
    with torch.no_grad():
        assert (ours.model(torch.tensor([ids])) - ref(torch.tensor([ids])).logits).abs().max() <= 1e-4


def test_convert_errors_name_the_file(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    code, _, err = run(capsys, "convert", str(bad), str(tmp_path / "out"), "--to", "hf")
    assert code == 1 and "broken.gguf" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_generate_and_chat_with_a_meta_directory_use_llama3_tokenizer(tmp_path, capsys, monkeypatch) -> None:
    """A Meta checkpoint without tokenizer.model falls back to the Llama 3 tokenizer llama-models ships."""
    import io

    from herd.formats import Checkpoint, write_checkpoint
    from herd.model import build_model, get_preset

    args = get_preset("tiny").replace(vocab_size=128256)
    sd = {k: v.detach() for k, v in build_model(args).state_dict().items()}
    write_checkpoint(tmp_path / "m", Checkpoint(args=args, state_dict=sd, format="meta", path=None), "meta")
    code, out, _ = run(capsys, "generate", "--model", str(tmp_path / "m"), "-p", "Hello", "-n", "4", "--json")
    result = json.loads(out)
    assert code == 0 and len(result["tokens"]) <= 4
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    code, out, _ = run(capsys, "chat", "--model", str(tmp_path / "m"), "-n", "3", "--dtype", "bf16")
    assert code == 0 and "you> Hi" in out


def test_tokenize_text_and_dialog(tmp_path, capsys) -> None:
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    from herd.tokenizer.llama3 import packaged_model_path

    meta = MetaTokenizer(packaged_model_path())
    out = json.loads(run(capsys, "tokenize", "--text", "Hello <|eot_id|>", "--json")[1])
    assert out["tokens"] == meta.encode("Hello <|eot_id|>", bos=False, eos=False)
    (tmp_path / "crlf.txt").write_bytes(b"a\r\n\r\nb")  # a file's bytes are tokenized unchanged (881, not 271)
    out = json.loads(run(capsys, "tokenize", "--file", str(tmp_path / "crlf.txt"), "--json")[1])
    assert out["tokens"] == meta.encode("a\r\n\r\nb", bos=False, eos=False) and 881 in out["tokens"]
    dialog = [
        {"role": "user", "content": "Gold price?"},
        {"role": "assistant", "tool_calls": [{"name": "brave_search", "arguments": {"query": "gold"}}],
         "stop_reason": "end_of_message"},
        {"role": "tool", "content": "2650"},
        {"role": "assistant", "content": "About 2650 USD."},
    ]  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(dialog))
    prompt = json.loads(run(capsys, "tokenize", "--dialog", str(tmp_path / "d.json"), "--json")[1])
    assert prompt["tokens"][-4:] == [128006, 78191, 128007, 271]  # open assistant header
    done = json.loads(run(capsys, "tokenize", "--dialog", str(tmp_path / "d.json"), "--complete", "--json")[1])
    targets = "".join(p for p, m in zip(done["pieces"], done["loss_mask"], strict=True) if m)
    assert targets == 'brave_search.call(query="gold")<|eom_id|>About 2650 USD.<|eot_id|>'
    (tmp_path / "bad.json").write_text('[{"role": "user",\n "content": }]')
    code, _, err = run(capsys, "tokenize", "--dialog", str(tmp_path / "bad.json"))
    assert code == 1 and "bad.json: the dialog is not valid JSON: Expecting value at line 2" in err


def test_tokenizer_train_writes_a_tokenizer_every_command_loads(tmp_path, capsys) -> None:
    import random

    rng = random.Random(0)
    words = ["herd", "llama", "model", "token", "train", "data", "shard", "mask", "pack", "curate"]
    docs = [{"text": " ".join(rng.choice(words) for _ in range(20))} for _ in range(300)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    code, out, _ = run(capsys, "tokenizer", "train", "--input", str(tmp_path / "c.jsonl"), "--vocab-size", "600",
                       "--out", str(tmp_path / "tok"))  # fmt: skip
    assert code == 0 and "BPE tokens + 256 special tokens" in out
    model = tmp_path / "tok" / "tokenizer.model"
    result = json.loads(run(capsys, "tokenize", "--tokenizer", str(model), "--text", "herd llama", "--json")[1])
    assert result["count"] == 2 and "".join(result["pieces"]) == "herd llama"
    code, _, err = run(capsys, "tokenizer", "train", "--input", str(tmp_path / "c.jsonl"), "--vocab-size", "300",
                       "--out", str(tmp_path / "t2"))  # fmt: skip
    assert code == 1 and "vocab_size 300" in err


def test_unsafe_no_sandbox_is_accepted_anywhere_and_only_then_allows_running_unisolated(monkeypatch, capsys) -> None:
    from herd.tools import sandbox

    monkeypatch.setenv(sandbox.BWRAP_ENV, "/nonexistent/bwrap")  # as on a machine without bubblewrap
    monkeypatch.setattr(sandbox, "_unsandboxed_allowed", False)
    with pytest.raises(sandbox.ToolError, match="refusing to run model-written code without a sandbox"):
        sandbox.run_python("print(1)")
    code, _, _ = run(capsys, "model", "info", "tiny", "--unsafe-no-sandbox")
    assert code == 0
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        assert sandbox.run_python("print(1)").stdout == "1\n"
