"""plot_run: the PNGs a run folder gets (reward, held-out accuracy, MoE expert load)."""

from __future__ import annotations

import json

from grpo.plots import plot_run


def test_plot_run_writes_every_figure_including_expert_load(tmp_path):
    records = [{"step": 0, "eval/pass@1": 0.2, "eval/stderr": 0.03}]
    for step in range(1, 7):
        r = {"step": step, "reward/mean": step / 10}
        r.update({f"moe/load/layer{layer}/expert{e}": 0.25 + 0.01 * (e - 1.5) for layer in range(2) for e in range(4)})
        records.append(r)
    records.append({"step": 6, "eval/pass@1": 0.5, "eval/stderr": 0.03})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    written = plot_run(tmp_path)

    assert sorted(p.name for p in written) == ["expert_load.png", "heldout_accuracy.png", "reward.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)
