"""Attack probes during training: which updates are attacked, and what the attacks found.

The grid hands every decoded training reply to `ProbeRunner.collect`; the runner keeps
those of the scheduled rounds and clients as `ProbeView`s (no data in them). At the end
of the round it runs the attack on each, then — separately — derives the ground truth
(the exact samples the client trained on, from the partition and the client's seeded
batch order) and scores the reconstructions. Results go to ``probes.jsonl``, PNG grids
of originals beside reconstructions, and a per-round summary in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedsim.scenarios.attacks import metrics as leak
from fedsim.scenarios.attacks.base import ATTACKS, ProbeView
from flwr.app import Message

from fedsim.core import keys, seeding
from fedsim.core.errors import ConfigError
from fedsim.core.schema import Named, named, option


@dataclasses.dataclass(frozen=True)
class ProbeSection:
    attack: Named | None = named("attack", "fedsim.scenarios.attacks:resolve_attack", None)
    rounds: tuple[int, ...] = option((), ge=0, doc="rounds to probe; with every = 0 and no rounds: every round")
    every: int = option(0, ge=0, le=1_000_000, doc="probe every k-th round")
    clients: int = option(1, ge=1, le=1_000_000, doc="at most this many clients per probed round (in send order)")
    client_ids: tuple[int, ...] = option((), ge=0, doc="probe only these partition ids")
    grid_images: int = option(8, ge=0, le=1000, doc="images per PNG grid (0 = no grids)")

    @property
    def enabled(self) -> bool:
        return self.attack is not None

    def due(self, rnd: int) -> bool:
        if not self.rounds and not self.every:
            return True
        return rnd in self.rounds or (self.every > 0 and rnd % self.every == 0)


@dataclasses.dataclass
class _Pending:
    view: ProbeView
    truth: Any  # a Truth, given to the metrics code only


class Truth:
    """Ground truth for one probe; attacks never hold one (a test guards this). ``indices``
    are the samples' positions in the federation's pool (for re-scoring and publishing)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        self.x = x
        self.y = y
        self.indices = indices if indices is not None else torch.full((len(y),), -1, dtype=torch.long)


class ProbeRunner:
    def __init__(self, cfg: ProbeSection, *, seed: int, data: Any, client_cfg: Any,
                 build_model: Callable[[], torch.nn.Module], lora: bool, out_dir: Path | None,
                 truth_fn: Callable[[int, int, ProbeView], Truth] | None = None) -> None:
        assert cfg.attack is not None
        self.cfg = cfg
        self.attack = ATTACKS.get(cfg.attack.name, "probe.attack.name").fn(cfg.attack.params)
        self.seed = seed
        self.data = data
        self.client_cfg = client_cfg
        self.build_model = build_model
        self.lora = lora
        self.out_dir = out_dir
        self.truth_fn = truth_fn or self.ground_truth
        self._pending: list[_Pending] = []
        self._taken: dict[int, int] = {}
        self.results: list[dict[str, Any]] = []
        self._checked = False

    def check_model(self) -> None:
        """Fail before training if the attack cannot work on this architecture."""
        model = self.build_model()
        state = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        view = ProbeView(build_model=self.build_model, sent=state, received=state, lr=1.0, steps=1, batch_size=1,
                         num_examples=1, momentum=0.0, input_shape=tuple(self.data.input_shape),
                         num_classes=self.data.num_classes, round=0, client=0, lora=self.lora)
        self.attack.check(view)
        self._checked = True

    # ------------------------------------------------------------ from the grid
    def collect(self, rnd: int, cid: int, sent: Message, reply: Message) -> None:
        if not self.cfg.due(rnd) or (self.cfg.client_ids and cid not in self.cfg.client_ids):
            return
        if self._taken.get(rnd, 0) >= self.cfg.clients:
            return
        self._taken[rnd] = self._taken.get(rnd, 0) + 1
        view = self.view(rnd, cid, sent, reply)
        if not self._checked:
            self.attack.check(view)  # e.g. analytic on a model without a first linear layer
            self._checked = True
        self._pending.append(_Pending(view, None))

    def view(self, rnd: int, cid: int, sent: Message, reply: Message) -> ProbeView:
        config = next(iter(sent.content.config_records.values()), {})
        metrics = next(iter(reply.content.metric_records.values()), {})
        c = self.client_cfg

        def arrays(msg: Message) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(a.numpy().copy()) for rec in msg.content.array_records.values()
                    for k, a in rec.items()}

        return ProbeView(
            build_model=self.build_model, sent=arrays(sent), received=arrays(reply),
            lr=float(config.get(keys.LR, c.lr)), steps=int(metrics.get(keys.STEPS, 1)),
            batch_size=int(config.get(keys.BATCH_SIZE, c.batch_size)),
            num_examples=int(metrics.get(keys.NUM_EXAMPLES, 1)), momentum=c.momentum,
            input_shape=tuple(self.data.input_shape), num_classes=self.data.num_classes,
            round=rnd, client=cid, lora=self.lora)

    # ----------------------------------------------------- ground truth (metrics side)
    def ground_truth(self, rnd: int, cid: int, view: ProbeView) -> Truth:
        """The samples the client trained on: its first steps x batch of the seeded batch order."""
        x, y = self.data.client_train(cid)
        order = torch.randperm(len(x), generator=seeding.torch_generator(self.seed, rnd, cid, "batches"))
        used = order[: min(len(x), view.batch_size * max(view.steps, 1))]
        index = getattr(self.data, "client_train_index", None)
        positions = index(cid)[used] if index is not None else used  # (lazy federations: local positions)
        return Truth(x[used], y[used], positions)

    # ------------------------------------------------------------ end of round
    def run_round(self, rnd: int, executor: Any = None) -> dict[str, Any]:
        """Attack this round's collected updates (on the executor's workers when given), then
        score every input each client trained on (`leak.score_all`) and save the artefacts."""
        pending, self._pending = self._pending, []
        if not pending:
            return {"probes": 0, "probe_psnr_mean": None, "probe_ssim_mean": None, "probe_label_acc": None,
                    "probe_coverage": None, "probe_psnr_reconstructed": None, "wall_probe_s": 0.0}
        start = time.perf_counter()
        jobs = [(self.attack, p.view, seeding.int_seed(self.seed, rnd, p.view.client, "probe")) for p in pending]
        outcomes = executor.call(run_attack, jobs) if executor is not None else [run_attack(j) for j in jobs]
        rows, montage = [], []
        for p, (rec, seconds) in zip(pending, outcomes):
            truth = self.truth_fn(rnd, p.view.client, p.view)  # only now: after the attack
            scores = leak.score_all(rec.x, rec.labels, truth.x, truth.y)
            done = [s for s in scores if s["reconstruction"] is not None]
            row = {"round": rnd, "client": p.view.client, "attack": self.attack.name, "images": len(truth.x),
                   "reconstructed": len(done), "coverage": len(done) / max(1, len(truth.x)),
                   "steps": p.view.steps, "batch_size": p.view.batch_size,
                   "psnr_mean": float(np.mean([s["psnr"] for s in scores])),
                   "psnr_reconstructed_mean": float(np.mean([s["psnr"] for s in done])) if done else None,
                   "ssim_mean": _nanmean([s["ssim"] for s in scores]),
                   "mse_mean": float(np.mean([s["mse"] for s in scores])),
                   "label_acc": leak.label_accuracy(rec.labels[: len(truth.y)], truth.y),
                   "final_loss": rec.final_loss, "per_image": scores, "wall_probe_s": seconds}
            rows.append(row)
            self._save(row, rec, truth)
            montage.append((row, rec, truth, scores))
        self._montage(rnd, montage)
        self.results.extend(rows)
        if self.out_dir is not None:
            with (self.out_dir / "probes.jsonl").open("a") as fh:
                for row in rows:
                    fh.write(json.dumps(_clean(row)) + "\n")
        return {"probes": len(rows),
                "probe_psnr_mean": float(np.mean([r["psnr_mean"] for r in rows])),
                "probe_ssim_mean": _nanmean([r["ssim_mean"] for r in rows]),
                "probe_label_acc": float(np.mean([r["label_acc"] for r in rows])),
                "probe_coverage": float(np.mean([r["coverage"] for r in rows])),
                "probe_psnr_reconstructed": _nanmean([r["psnr_reconstructed_mean"] for r in rows]),
                "wall_probe_s": time.perf_counter() - start}

    def _save(self, row: dict[str, Any], rec: Any, truth: Truth) -> None:
        """``probes/roundRRRR-clientCCCCC.npz``: reconstructions, originals, labels (true and
        inferred), the originals' pool indices, the pairing, per-image scores, the loss trace."""
        if self.out_dir is None:
            return
        folder = self.out_dir / "probes"
        folder.mkdir(exist_ok=True)
        scores = row["per_image"]
        np.savez_compressed(
            folder / f"round{row['round']:04d}-client{row['client']:05d}.npz",
            reconstructions=rec.x.detach().float().numpy(), inferred_labels=rec.labels.detach().numpy(),
            originals=truth.x.detach().float().numpy(), true_labels=truth.y.detach().numpy(),
            indices=truth.indices.detach().numpy(),
            pairing=np.array([-1 if s["reconstruction"] is None else s["reconstruction"] for s in scores]),
            psnr=np.array([s["psnr"] for s in scores]), ssim=np.array([s["ssim"] for s in scores]),
            loss_trace=np.asarray(rec.loss_trace, dtype=np.float64), final_loss=np.float64(rec.final_loss))
        self._grid(row, rec.x, truth, row["round"])

    def _montage(self, rnd: int, probes: list[tuple[Any, ...]]) -> None:
        """``probes/roundRRRR.png``: every probed client of the round, originals over reconstructions."""
        if self.out_dir is None or self.cfg.grid_images == 0 or not probes or len(probes[0][2].x[0].shape) != 3:
            return
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        per = max(1, min(self.cfg.grid_images, max(len(t.x) for _, _, t, _ in probes)))
        fig, axes = plt.subplots(2 * len(probes), per, figsize=(1.2 * per + 0.6, 2.4 * len(probes)), squeeze=False)
        for k, (row, rec, truth, scores) in enumerate(probes):
            for j in range(per):
                for i in range(2):
                    axes[2 * k + i, j].axis("off")
                if j >= len(scores):
                    continue
                s = scores[j]
                images = [truth.x[j], None if s["reconstruction"] is None else rec.x[s["reconstruction"]].clamp(0, 1)]
                for i, img in enumerate(images):
                    if img is None:
                        continue
                    chw = img.detach().numpy()
                    axes[2 * k + i, j].imshow(chw[0] if chw.shape[0] == 1 else np.transpose(chw, (1, 2, 0)),
                                              cmap="gray", vmin=0, vmax=1)
                axes[2 * k + 1, j].set_title(f"{s['psnr']:.0f} dB", fontsize=6)
            axes[2 * k, 0].set_title(f"client {row['client']}", fontsize=7, loc="left")
        fig.suptitle(f"round {rnd}: {probes[0][0]['attack']} (top: original, bottom: attack)", fontsize=8)
        fig.tight_layout()
        folder = self.out_dir / "probes"
        folder.mkdir(exist_ok=True)
        fig.savefig(folder / f"round{rnd:04d}.png", dpi=100)
        plt.close(fig)

    def _grid(self, row: dict[str, Any], x_hat: torch.Tensor, truth: Truth, rnd: int) -> None:
        if self.out_dir is None or self.cfg.grid_images == 0 or len(truth.x[0].shape) != 3:
            return
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        pairs = leak.match(x_hat, truth.x)[: self.cfg.grid_images]
        fig, axes = plt.subplots(2, max(1, len(pairs)), figsize=(max(2.6, 1.4 * len(pairs)), 3.2), squeeze=False)
        for j, (r, t) in enumerate(pairs):
            for i, img in enumerate((truth.x[t], x_hat[r].clamp(0, 1))):
                ax = axes[i, j]
                chw = img.detach().numpy()
                ax.imshow(chw[0] if chw.shape[0] == 1 else np.transpose(chw, (1, 2, 0)), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[1, j].set_xlabel(f"{leak.psnr(x_hat[r], truth.x[t]):.1f} dB", fontsize=7)
        axes[0, 0].set_ylabel("original", fontsize=8)
        axes[1, 0].set_ylabel("attack", fontsize=8)
        fig.suptitle(f"round {rnd}, client {row['client']}: {row['attack']}", fontsize=8)
        fig.tight_layout()
        folder = self.out_dir / "probes"
        folder.mkdir(exist_ok=True)
        fig.savefig(folder / f"round{rnd:04d}-client{row['client']:05d}.png", dpi=100)
        plt.close(fig)


def _nanmean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def run_attack(job: tuple[Any, ProbeView, int]) -> tuple[Any, float]:
    """One attack on one view (runs wherever the executor puts it); (reconstruction, seconds)."""
    attack, view, seed = job
    generator = torch.Generator()
    generator.manual_seed(seed)
    start = time.perf_counter()
    rec = attack.run(view, generator)
    return rec, time.perf_counter() - start


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def check_probe_config(cfg: Any) -> None:
    """A probe needs fedsim's ClientApp (its batches give the ground truth), and names only
    clients and rounds the run has (a probe that can never fire is a mistake, said early)."""
    if cfg.probe.enabled and cfg.client.app != "fedsim":
        raise ConfigError("probe.attack.name", cfg.probe.attack.name,
                          'needs fedsim\'s ClientApp (client.app = "fedsim") to know the true inputs')
    outside = [c for c in cfg.probe.client_ids if c >= cfg.data.num_clients]
    if outside:
        raise ConfigError("probe.client_ids", list(cfg.probe.client_ids),
                          f"names client {outside[0]}; partition ids are 0..{cfg.data.num_clients - 1}")
    late = [r for r in cfg.probe.rounds if r > cfg.run.rounds]
    if late:
        raise ConfigError("probe.rounds", list(cfg.probe.rounds),
                          f"names round {late[0]}; the run has rounds 1..{cfg.run.rounds}")
