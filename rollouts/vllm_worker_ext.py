"""Worker extension for a vLLM server we talk to (`--worker-extension-cls`).

vLLM mixes this class into its workers; `POST /collective_rpc {"method":
"grpo_patch"}` then applies, inside the server's engine process, the same two
fixes the in-process engine applies (vllm_patches.py): pre-truncation logprobs
and the CPU MoE repack on weight reload; `grpo_reload_weights` reloads from a
folder, refreshes tied layers' CPU GEMM handles, and checks what vLLM reports as
not loaded (vllm_engine.ReloadReport): a weight of the model the folder did not
provide is an EngineError naming it (the HTTP call fails with it), not a warning
in the server's log.
"""

from __future__ import annotations


class GrpoWorkerExtension:
    def grpo_patch(self) -> dict:
        from rollouts.vllm_patches import repack_cpu_experts_on_reload, report_pre_truncation_logprobs

        runner = self.model_runner  # type: ignore[attr-defined]
        report_pre_truncation_logprobs(runner)
        return {"patched_moe_layers": repack_cpu_experts_on_reload(runner.model)}

    def grpo_reload_weights(self, weights_path: str) -> None:
        from rollouts.vllm_engine import never_reloaded_layers, reload_report
        from rollouts.vllm_patches import refresh_shared_cpu_linears

        model = self.model_runner.model  # type: ignore[attr-defined]
        with reload_report() as report:
            self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        refresh_shared_cpu_linears(model)
        report.check(set(), never_reloaded_layers(model))  # a full checkpoint: nothing else may be missing
