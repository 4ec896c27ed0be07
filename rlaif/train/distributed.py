"""What the trainers do differently when the model is sharded over processes (FSDP, DeepSpeed ZeRO).

Under `accelerate launch` with the configs in `configs/accelerate/`:

- **saving**: `accelerator.get_state_dict(model)` is a collective (FSDP2 gathers each DTensor, ZeRO-3
  consolidates the partitions), so every rank calls it; rank 0 gets the full tensors and writes them
  with `save_pretrained(state_dict=...)`. A LoRA model is merged in that full state dict
  (W + scaling·B·A per adapted layer), never through `merge_and_unload` on sharded weights.
- **generation** (PPO rollouts): a sharded forward all-gathers every layer, so ranks that stop
  sampling at different lengths would wait on each other forever. The policy is gathered once per
  rollout instead: FSDP2 unshards every `fully_shard` unit and keeps them unsharded until sampling is
  done; ZeRO-3 gathers all parameters (`deepspeed.zero.GatheredParameters`) with its fetch hooks
  removed meanwhile, as TRL's `unwrap_model_for_generation` does; FSDP1 samples with
  `synced_gpus=True` (every rank keeps stepping until all are done).
- **a frozen second model** (PPO's reference) is loaded from its folder, not deep-copied from a
  partitioned model, and sharded like the policy (FSDP2 `fully_shard`, or a DeepSpeed engine
  without optimizer, as TRL's `prepare_deepspeed`).
- **models no one prepares** (PPO's reward models, a `labeler:direct` judge) load whole on every
  rank (`unsharded_loading`): not partitioned by ZeRO-3 init, and with FSDP's RAM-efficient
  loading (real weights on rank 0 only, for accelerate to broadcast) off while they load.
- **CPU**: accelerate routes FSDP only to accelerators. torch's FSDP2 runs on CPU over gloo, so a
  launch with an FSDP config on a machine without CUDA (the tests) turns accelerate's FSDP2 path on
  over gloo: the same prepare, state-dict and unshard code as on GPUs.
- **DeepSpeed's own gradient accumulation**: a DeepSpeed config with a number of its own different
  from the trainer's `grad_accum` would step the optimizer on another schedule than the trainer
  plans; it is refused with one line (`auto` in the DeepSpeed config takes the trainer's value).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


from rlaif.errors import UserError


def sharding(accelerator) -> str:
    """"fsdp2" | "fsdp1" | "zero3" | "deepspeed" | "replicated" (DDP, one process)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp2" if accelerator.is_fsdp2 else "fsdp1"
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        return "zero3" if int(stage) == 3 else "deepspeed"
    return "replicated"


def check_launch(accelerator, grad_accum: int) -> None:
    """After the Accelerator is built: FSDP2 over gloo on CPU, and the DeepSpeed accumulation check."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            and accelerator.distributed_type == DistributedType.MULTI_CPU):
        plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* environment
        if plugin.fsdp_version != 2:
            raise UserError("FSDP on CPU: only FSDP2 runs over gloo; set fsdp_version: 2 in the accelerate "
                            "config (configs/accelerate/fsdp2.yaml)")
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        # the same switch accelerate's own state makes on GPUs (AcceleratorState.__init__)
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config.get("gradient_accumulation_steps", "auto")
        if ds != "auto" and int(ds) != grad_accum:
            raise UserError(f"the DeepSpeed config sets gradient_accumulation_steps {ds} but the trainer's "
                            f"grad_accum is {grad_accum}: set grad_accum: {ds}, or put \"auto\" in the "
                            "DeepSpeed config")


# ---------------------------------------------------------------- saving


def lora_scalings(peft_model) -> dict[str, tuple[float, bool]]:
    """LoRA layer name (as in the PEFT model's state dict) -> (scaling, fan_in_fan_out)."""
    out = {}
    for name, module in peft_model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and hasattr(module, "base_layer"):
            if len(scaling) != 1:
                raise UserError(f"LoRA layer {name}: expected one adapter, found {sorted(scaling)}")
            out[name] = (float(next(iter(scaling.values()))), bool(getattr(module, "fan_in_fan_out", False)))
    return out


def merge_lora_state_dict(state: dict, scalings: dict[str, tuple[float, bool]],
                          prefix: str = "base_model.model.") -> dict:
    """A PEFT LoRA model's full state dict -> the base model's, adapters merged:
    W' = W + scaling·(B @ A) for linear layers (transposed when fan_in_fan_out), and
    E' = E + scaling·(B @ A)ᵀ for embeddings, as peft's `get_delta_weight`."""
    out: dict = {}
    for name, (scaling, fan_in_fan_out) in scalings.items():
        weight = state.pop(f"{name}.base_layer.weight")
        a = [k for k in list(state) if k.startswith(f"{name}.lora_A.") or k.startswith(f"{name}.lora_embedding_A.")]
        b = [k for k in list(state) if k.startswith(f"{name}.lora_B.") or k.startswith(f"{name}.lora_embedding_B.")]
        if len(a) != 1 or len(b) != 1:
            raise UserError(f"LoRA layer {name}: expected one A and one B matrix, found {a + b}")
        A, B = state.pop(a[0]).float(), state.pop(b[0]).float()
        delta = (B @ A) * scaling
        if "lora_embedding_A" in a[0] or fan_in_fan_out:
            delta = delta.T
        out[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
        if f"{name}.base_layer.bias" in state:
            out[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    leftover = [k for k in state if "lora_" in k]
    if leftover:
        raise UserError(f"LoRA weights this merge does not handle: {leftover[:3]}")
    out.update(state)
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}


def save_model(accelerator, model, out: Path, tokenizer=None, *, lora: bool = False, submodule: str | None = None,
               extra: dict[str, str] | None = None) -> None:
    """Save a prepared model as a `from_pretrained` folder. Every rank must call this (the state dict
    is gathered collectively); rank 0 writes. `submodule`: save that attribute of the model (PPO's
    `lm`), `extra`: {attribute: file} saved beside it as safetensors (PPO's `v_head`)."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    from safetensors.torch import save_file

    target = accelerator.unwrap_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for attr, filename in (extra or {}).items():
        part = {k[len(attr) + 1:]: v.contiguous() for k, v in state.items() if k.startswith(attr + ".")}
        save_file(part, str(out / filename))
    if submodule:
        state = {k[len(submodule) + 1:]: v for k, v in state.items() if k.startswith(submodule + ".")}
        target = getattr(target, submodule)
    if lora:
        state = merge_lora_state_dict(dict(state), lora_scalings(target))
        target = target.get_base_model()
    target.save_pretrained(out, state_dict=state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- generation


def _fsdp2_units(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered_for_generation(accelerator, model):
    """`with gathered_for_generation(acc, prepared) as extra:` sample with
    `unwrap_model(prepared)...generate(..., **extra)`: the parameters are gathered once for the
    whole sampling (see the module docstring), and released after."""
    kind = sharding(accelerator)
    if kind == "fsdp2":
        units = _fsdp2_units(model)
        if units:  # generate() runs the LM inside the root: torch wants the root initialised first
            units[0]._get_fsdp_state()._lazy_init()
        # each unit's "reshard after forward" setting (torch keeps it as the group's post-forward
        # mesh); off while sampling so the gathered weights stay for every token
        saved = [[g.post_forward_mesh_info for g in u._get_fsdp_state()._fsdp_param_groups] for u in units]
        for u in units:
            u.set_reshard_after_forward(False, recurse=False)
            u.unshard()
        try:
            yield {}
        finally:
            for u, infos in zip(units, saved):
                u.reshard()
                for g, info in zip(u._get_fsdp_state()._fsdp_param_groups, infos):
                    g.post_forward_mesh_info = info
            if units:  # the root (first in module order) keeps its parameters after forward, as torch
                units[0].set_reshard_after_forward(False, recurse=False)  # resolves it by default
    elif kind == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            offload = _zero3_offload(model)
            if offload is not None:  # ZeRO-3's fetch/release hooks would re-partition per layer
                for p in offload.module.parameters(recurse=True):
                    p.ds_active_sub_modules.clear()
                for hook in offload.forward_hooks + offload.backward_hooks:
                    hook.remove()
                offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield {}
            finally:
                if offload is not None:
                    coordinator = getattr(offload, "param_coordinator", None)
                    if coordinator is not None and not coordinator.is_invalid_trace():
                        coordinator._invalidate_trace()
                    offload._register_deepspeed_module(offload.module)
    elif kind == "fsdp1":
        yield {"synced_gpus": True}
    else:
        yield {}


def _zero3_offload(engine):
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is None:
        return None
    return getattr(optimizer, "parameter_offload", optimizer)


# ---------------------------------------------------------------- frozen models


def prepare_frozen(accelerator, model):
    """A frozen model (PPO's reference) placed and sharded like the policy, for forward passes only."""
    model.eval().requires_grad_(False)
    kind = sharding(accelerator)
    if kind == "fsdp2":
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model)
    if kind in ("zero3", "deepspeed"):
        return _deepspeed_inference(accelerator, model)
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        plugin = accelerator.state.fsdp_plugin
        plugin.set_auto_wrap_policy(model)
        return FSDP(model, sharding_strategy=plugin.sharding_strategy, auto_wrap_policy=plugin.auto_wrap_policy,
                    mixed_precision=plugin.mixed_precision_policy, use_orig_params=plugin.use_orig_params,
                    device_id=accelerator.device)
    return model.to(accelerator.device)


def _deepspeed_inference(accelerator, model):
    """A DeepSpeed engine without optimizer (TRL's `prepare_deepspeed`): partitioned under ZeRO-3,
    a plain replica (stage 0) otherwise."""
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    if int(zero.get("stage", 0)) != 3:
        zero["stage"] = 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


RAM_EFFICIENT_LOADING = "FSDP_CPU_RAM_EFFICIENT_LOADING"


@contextmanager
def rank0_loading_off():
    """`from_pretrained` inside loads the checkpoint whole on every rank, as without FSDP.

    An FSDP config with `fsdp_cpu_ram_efficient_loading: true` (configs/accelerate/fsdp2.yaml) makes
    accelerate export FSDP_CPU_RAM_EFFICIENT_LOADING=true (its launcher, and the FSDP plugin when it
    is built); transformers' `is_fsdp_enabled()` reads it with ACCELERATE_USE_FSDP at load time, and
    then the other ranks keep placeholders for rank 0 to fill: every parameter `torch.empty` in
    transformers 4.x (a reward model scored NaN on rank 1 with 4.57), the keys a checkpoint lacks
    left on `meta` in 5.x. That is right for a model accelerate prepares (`fsdp2_prepare_model`
    broadcasts rank 0's weights), wrong for one no one prepares. The variable is unset for the
    block and restored after; transformers reads it only while loading."""
    before = os.environ.pop(RAM_EFFICIENT_LOADING, None)
    try:
        yield
    finally:
        if before is not None:
            os.environ[RAM_EFFICIENT_LOADING] = before


@contextmanager
def unsharded_loading(accelerator):
    """Models loaded inside are whole on every rank (PPO's reward models and a `labeler:direct`
    judge engine, used outside any engine accelerate prepares): with zero3_init_flag,
    `from_pretrained` would otherwise build them partitioned, and under FSDP's RAM-efficient
    loading give every rank but 0 placeholder weights (`rank0_loading_off`)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    with rank0_loading_off():
        if sharding(accelerator) == "zero3" and plugin is not None:
            with plugin.zero3_init_context_manager(enable=False):
                yield
        else:
            yield
