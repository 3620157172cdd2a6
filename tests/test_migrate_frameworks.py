"""migrate on training-framework folders: a real HF Trainer `checkpoint-N/` and a real Accelerate `save_state` folder.

Each becomes one converted folder with the same layout (safe files copied as they are, each pickle a
sub-folder of the same name), nothing under the destination is a pickle, and training resumes from
it with `load_checkpoint` (plain PyTorch and Accelerate), bitwise as from the original.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convert import load_checkpoint
from convert.migrate import migrate
from tests.helpers import assert_equivalent, bits

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")


class TinyTokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(0, 50, (8,), generator=g), "labels": torch.tensor(i % 2)}


def _tiny_bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _accelerate_run(folder: Path, steps: int, resume_from: Path | None = None) -> tuple[torch.nn.Module, Any]:
    """A plain Accelerate loop: `steps` steps, `save_state(folder)` halfway unless resuming (then load it first)."""
    accelerate.utils.set_seed(0)
    acc = accelerate.Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    start = 0
    if resume_from is not None:  # the documented recipe: everything from the converted folder
        from safetensors.torch import load_file

        model.load_state_dict(load_file(resume_from / "model.safetensors"))
        opt.load_state_dict(load_checkpoint(resume_from / "optimizer.bin"))
        sched.load_state_dict(load_checkpoint(resume_from / "scheduler.bin"))
        states = load_checkpoint(resume_from / "random_states_0.pkl")
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        start = steps // 2
    for step in range(start, steps):
        x = torch.randn(8, 4)  # drawn from the global RNG: a wrong RNG restore changes the data
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        acc.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        if resume_from is None and step + 1 == steps // 2:
            acc.save_state(str(folder))
    return model, opt


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    src = tmp_path_factory.mktemp("runs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = transformers.TrainingArguments(
            output_dir=str(src / "bert"), max_steps=4, save_steps=2, per_device_train_batch_size=4, report_to=[],
            use_cpu=True, logging_steps=100, disable_tqdm=True, seed=0)
        transformers.Trainer(model=_tiny_bert(), args=args, train_dataset=TinyTokens()).train()
        acc_model, acc_opt = _accelerate_run(src / "accel" / "step3", steps=6)
    torch.save({"w": torch.ones(2)}, src / "plain.pt")
    dst = tmp_path_factory.mktemp("out") / "migrated"
    report = migrate(src, dst, jobs=1)
    return src, dst, report, (acc_model, acc_opt)


def test_framework_folders_are_one_job_each(runs):
    _, _, report, _ = runs
    statuses = {rel: entry["status"] for rel, entry in report.files.items()}
    assert statuses == {"bert/checkpoint-2": "converted", "bert/checkpoint-4": "converted",
                        "accel/step3": "converted", "plain.pt": "converted"}, report.files
    assert all(report.files[r]["verified"] for r in statuses)


def test_same_layout_safe_files_copied_pickles_converted(runs):
    src, dst, _, _ = runs
    for rel, pickles in [("bert/checkpoint-4", {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}),
                         ("accel/step3", {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"})]:
        original, converted = src / rel, dst / rel
        names = {p.name for p in original.iterdir()}
        assert {p.name for p in converted.iterdir()} == names
        assert pickles <= names
        for name in names:
            if name in pickles:
                assert (converted / name / "checkpoint.json").is_file(), name
            else:
                assert (converted / name).read_bytes() == (original / name).read_bytes(), name


def test_nothing_under_the_destination_is_a_pickle(runs):
    _, dst, _, _ = runs
    files = [p for p in dst.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", path


def test_resume_plain_pytorch_from_a_converted_trainer_checkpoint(runs):
    """The README recipe: model from the folder, optimizer/scheduler/RNG from the converted sub-folders."""
    src, dst, _, _ = runs
    ckpt, original = dst / "bert" / "checkpoint-2", src / "bert" / "checkpoint-2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.load(original / "optimizer.pt", weights_only=False)  # only to check against
        rng_reference = torch.load(original / "rng_state.pth", weights_only=False)
    assert_equivalent(load_checkpoint(ckpt / "optimizer.pt"), reference)  # before steps update it in place
    results = []
    for optimizer_state, rng in [(load_checkpoint(ckpt / "optimizer.pt"), load_checkpoint(ckpt / "rng_state.pth")),
                                 (reference, rng_reference)]:
        model = transformers.BertForSequenceClassification.from_pretrained(ckpt)
        decay = set(transformers.Trainer.get_decay_parameter_names(None, model))  # the Trainer's two groups
        opt = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if n in decay]},
                                 {"params": [p for n, p in model.named_parameters() if n not in decay]}], lr=5e-5)
        opt.load_state_dict(optimizer_state)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 4)
        sched.load_state_dict(load_checkpoint(ckpt / "scheduler.pt"))
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["cpu"])
        for _ in range(2):
            batch = TinyTokens()[int(torch.randint(0, 16, ()))]
            loss = model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        results.append(model.state_dict())
    for name, t in results[0].items():
        assert bits(t) == bits(results[1][name]), name
    args = load_checkpoint(ckpt / "training_args.bin")
    assert args.qualname == "transformers.training_args.TrainingArguments" and args.state["save_steps"] == 2


def test_resume_accelerate_from_a_converted_save_state_folder(runs, tmp_path):
    _, dst, _, (model_full, opt_full) = runs
    model, opt = _accelerate_run(tmp_path / "unused", steps=6, resume_from=dst / "accel" / "step3")
    for (name, a), b in zip(model_full.state_dict().items(), model.state_dict().values()):
        assert bits(a) == bits(b), name
    assert_equivalent(opt.state_dict(), opt_full.state_dict())


def test_rerun_skips_framework_folders(runs):
    src, dst, _, _ = runs
    again = migrate(src, dst, jobs=1)
    assert {e["status"] for e in again.files.values()} == {"skipped"}


def test_a_broken_pickle_fails_the_whole_folder_and_leaves_nothing(runs, tmp_path):
    import shutil

    from convert import ConvertError
    from convert.ops.units import convert_framework_folder

    src, _, _, _ = runs
    broken = tmp_path / "checkpoint-2"
    shutil.copytree(src / "bert" / "checkpoint-2", broken)
    data = (broken / "scheduler.pt").read_bytes()
    (broken / "scheduler.pt").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError):
        convert_framework_folder(broken, out / "checkpoint-2")
    assert list(out.iterdir()) == []
