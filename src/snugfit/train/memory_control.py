"""The learner's memory settings and plan: the one place they change.

`MemoryControl` is the part of `snugfit.train.learner.Learner` that owns
``memory`` (a frozen `MemorySettings`), the GradScaler that goes with its
precision, and the `Planner`'s plan: ``set_memory(why, ...)`` is the only writer,
and every change is logged as a ``memory`` event saying why (the plan, an
out-of-memory fallback, auto precision, a checkpoint, the user). It also holds
the two rules that follow from the settings: which BatchNorm layers keep their
statistics (`train_mode`), and what an out-of-memory error in a training step
falls back to (`_fall_back`, called by the loop's ``train_step``).
"""

from __future__ import annotations

import logging

from snugfit import distributed, models
from snugfit.errors import SnugfitError
from snugfit.memory.oom import StepSnapshot, caution, next_fallback, release_memory
from snugfit.memory.precision import half_precision, make_scaler
from snugfit.memory.settings import MemorySettings
from snugfit.train.planning import phase_key

log = logging.getLogger("snugfit")


class MemoryControl:
    """Memory settings and plans of a Learner (see the module docstring)."""

    @property
    def precision(self) -> str:
        return self.memory.precision

    @property
    def micro_bs(self) -> int | None:
        return self.memory.micro_bs

    @property
    def accumulate(self) -> int | None:
        return self.memory.accumulate

    @property
    def checkpointing(self) -> bool:
        return self.memory.checkpointing

    @property
    def eval_bs(self) -> int | None:
        return self.memory.eval_bs

    def set_memory(self, why: str, **changes) -> MemorySettings:
        """Change the memory settings (`MemorySettings` fields), saying why: the one
        place they change. Precision brings its GradScaler, checkpointing is set on
        the model (off when the model has no way to); a change is logged as a
        ``memory`` event with ``why``."""
        old, new = self.memory, self.memory.replace(**changes)
        if "checkpointing" in changes:
            how = models.set_grad_checkpointing(self.model, new.checkpointing)
            new = new.replace(checkpointing=new.checkpointing and how != "none")
        if new.precision != old.precision:
            self.scaler = make_scaler(new.precision, self.device)
        self.memory = new
        changed = {k: v for k, v in vars(new).items() if vars(old)[k] != v}
        if changed:
            self.events.emit("memory", why=why, **changed)
        return new

    def _ask_precision(self, precision: str):
        self.precision_request = precision  # what plans keep to (no "auto" choice)
        self.set_memory("asked for", precision=precision)
        return self

    def to_fp16(self):
        """Mixed precision with float16 and a GradScaler (fastai's name)."""
        return self._ask_precision("fp16")

    def to_bf16(self):
        """Mixed precision with bfloat16 (no loss scaling needed)."""
        return self._ask_precision("bf16")

    def to_fp32(self):
        return self._ask_precision("fp32")

    def set_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing through timm (or a generic fallback over stages)."""
        self.set_memory("asked for", checkpointing=enable)

    @property
    def memory_plan(self):
        """The last memory plan (`snugfit.memory.MemoryPlan`), or None."""
        return self.planner.plan

    def phase_key(self) -> tuple:
        """What moves memory now: the frozen groups, the image size and the batch size."""
        return phase_key(self.frozen_to, self.preprocessing.train_input, self.dls.bs)

    def plan(self, budget=None, bs=None, size=None, apply: bool = True, device_type=None):
        """Plan precision, micro-batch and checkpointing to fit ``budget``; print the table.

        The plan is computed for the model as it is now (frozen or not), before
        training: exact parameter, gradient and optimizer bytes, activations
        measured on the real model at micro-batch 1 and 2 and extrapolated, and a
        margin. With ``apply`` the fastest candidate that fits is used. Under
        torchrun ``bs`` is the global batch and the plan is for one rank's shard.
        ``device_type="cuda"`` on a machine without that GPU makes it a what-if: the
        probe runs on this device, the budget is the GPU's.
        """
        p = self.planner.make(
            self.model,
            bs=bs or self.dls.bs,
            size=size or self.preprocessing.train_input,
            precision_request=self.precision_request,
            precision=self.precision,
            opt=self.opt_name,
            channels_last=self.channels_last,
            shards=distributed.world_size() if self.distributed else 1,
            extra_per_sample=self.task.target_bytes(size or self.preprocessing.train_input),
            budget=budget,
            device_type=device_type,
        )
        p.frozen_to = self.frozen_to
        self.console.print(p.table())
        self.console.print(p.summary(), highlight=False)
        self.planner.plan = p
        self.events.emit("plan", **p.to_dict(), applied=apply)
        if apply and p.chosen is not None:
            c = p.chosen
            levers = {"micro_bs": c.micro_bs, "checkpointing": c.checkpointing}
            self.set_memory("plan", precision=c.precision, **levers)
        if self.dls is not None:
            self.planner.settled(self.phase_key())
        return p

    def replan_if_needed(self) -> None:
        """Plan again when the phase changed since the last plan (with a budget, or on
        CUDA): unfreezing or a new size moves memory."""
        if self.planner.stale(self.phase_key()):
            self.plan()

    def train_mode(self) -> None:
        """The model in train mode, except BatchNorm layers that must keep their statistics.

        Frozen BatchNorm layers go to eval mode: their running statistics stay the
        pretrained ones, and nothing of the frozen body needs a graph. Below
        ``bn_freeze_below`` samples per micro-batch all BN layers do, since statistics
        of a few samples would make micro-batches differ from one batch.
        """
        self.model.train()
        micro = self.memory.micro(-(-self.dls.bs // distributed.world_size()))  # a shard
        small = bool(self.bn_freeze_below) and micro < self.bn_freeze_below
        trainable_bn = models.batchnorm_to_eval(self.model, everywhere=small)
        note = (micro, self.bn_freeze_below) if small and trainable_bn else None
        if note and note != self._bn_note:
            log.info(
                f"micro-batch {note[0]} < bn_freeze_below={note[1]}: BatchNorm running "
                "statistics are frozen (eval mode); pass bn_freeze_below=0 to keep them training"
            )
        self._bn_note = note

    def _fall_back(self, snapshot: StepSnapshot, n: int, start_mbs: int, message) -> None:
        """After an OOM: free, restore the step's state, take the next fallback (agreed
        by all ranks under torchrun), log it; raise when nothing is left."""
        self.opt.zero_grad(set_to_none=True)
        release_memory(self.device)
        snapshot.restore()
        now = self.memory.replace(micro_bs=self.memory.micro(n))
        nxt = next_fallback(now, start_mbs, half_precision(self.device))
        if self.distributed:  # all ranks take the most cautious of the failed ranks' settings
            nxt, message = distributed.agree_fallback(nxt, message, caution)
        if nxt is None:
            raise SnugfitError(
                f"out of memory ({message}) even with a micro-batch of 1, activation "
                f"checkpointing and {self.precision}; {self.planner.advice()}"
            )
        self.set_memory("out of memory", **nxt.levers())
        fields = {"from": now.levers(), "to": nxt.levers()}
        self.events.emit(
            "oom", phase="train", epoch=self.epoch, batch=self.iter, **fields, error=message,
            fit=self.fit_index,
        )  # fmt: skip
        log.warning(
            f"out of memory at epoch {self.epoch} batch {self.iter} ({now.describe()}): "
            f"retrying the same batch with micro-batch {nxt.micro_bs} x "
            f"{-(-n // nxt.micro_bs)} steps, {nxt.precision}"
            f"{', checkpointing' if nxt.checkpointing else ''}"
        )
        self.train_mode()  # a smaller micro-batch may cross bn_freeze_below
