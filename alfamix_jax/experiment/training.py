"""Training the classifier on the labelled part of the pool: one jitted program per fit.

The original (models/training.py of the ALFA-Mix repo) loops over epochs in Python with a
DataLoader over the labelled subset. Here the whole fit is one XLA program over fixed shapes: the
pool x [N, ...] and a labelled mask [N] go in, a `lax.while_loop` runs epochs until the stop rule,
and a `fori_loop` over a traced number of batches trains on [batch_size, ...] batches gathered
from the pool. The labelled count is traced, so round after round reuses one compilation.

Semantics kept from the original:
- each epoch visits the labelled rows once in a fresh random order (key folded from the train key
  and the epoch);
- the last partial batch is filled up by wrapping to the epoch's first rows (real images, so
  BatchNorm's batch statistics see real data), and those filler rows have loss weight 0; a batch
  with <= 1 real row is skipped (the original's `if y.size(0) <= 1: continue`);
- loss = mean cross-entropy over the real rows; epoch accuracy = correct train-mode predictions in
  the batches trained / number labelled; stop once that is >= stop_accuracy or after max_epochs.
Unlabelled rows are never read into a batch, so their contents and labels do not matter.

The model is split once into a static graphdef (train and eval views) and plain state pytrees;
`TrainState` holds only arrays, so orbax saves and restores it exactly. Dropout keys are folded
from the key given to `train` (epoch, batch): a fit is a pure function of its inputs.

Data parallel (`mesh=`, the 1-D "pool" mesh of alfamix_jax.selection.mesh that selection uses): the state
is replicated over the mesh and every batch is split over it along rows, by sharding constraints
inside the jitted step, so XLA's partitioner computes per-device gradients and all-reduces them
(jit + NamedSharding, no pmap). The fit is the same function (dropout masks are partitionable
threefry draws, equal under any sharding); only the order of float sums changes.
"""
import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from alfamix_jax.experiment.models import linear_head_params
from alfamix_jax.selection.blocks import block_start
from alfamix_jax.selection.heads import LinearHead, linear_head_apply
from alfamix_jax.selection.mesh import mesh_size, padded_rows, replicated, row_sharding

OPTIMIZERS = ("adam", "sgd")
LOOPS = ("auto", "device", "host")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"  # "adam" | "sgd" (sgd uses momentum)
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0  # PyTorch-style L2 added to the gradient (not decoupled)
    batch_size: int = 64
    max_epochs: int = 200
    stop_accuracy: float = 0.99  # stop once the epoch's training accuracy reaches it (original: 0.99)
    warm_start: bool = False  # False = the original: re-initialise to the same initial weights each round
    eval_batch_size: int = 1024
    # "device": the whole fit is one XLA program (while_loop over epochs); "host": a Python loop
    # over epochs and batches calling one jitted step; "auto": host for convolutional models on
    # CPU, device otherwise. XLA:CPU runs convolutions inside loop bodies about 40x slower than
    # at top level (ResNet-18, batch 16: 0.5 s per step standalone, 19 s inside fori_loop/scan).
    loop: str = "auto"
    # True: the runner trains and evaluates data-parallel on a pool_mesh() over all devices (the
    # mesh selection uses), see make_trainer(mesh=...); batch_size must then be a multiple of the
    # device count. Results match the single-device fit up to float summation order.
    data_parallel: bool = False


def check_train_config(cfg: TrainConfig) -> None:
    """ValueError naming the field for settings no fit can use."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: got {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not cfg.learning_rate > 0:
        raise ValueError(f"learning_rate: got {cfg.learning_rate}; expected > 0")
    if not 0 <= cfg.momentum < 1:
        raise ValueError(f"momentum: got {cfg.momentum}; expected in [0, 1)")
    if not cfg.weight_decay >= 0:
        raise ValueError(f"weight_decay: got {cfg.weight_decay}; expected >= 0")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size: got {cfg.batch_size}; expected >= 2 (batches of one row are skipped)")
    if cfg.max_epochs < 1:
        raise ValueError(f"max_epochs: got {cfg.max_epochs}; expected >= 1")
    if cfg.eval_batch_size < 1:
        raise ValueError(f"eval_batch_size: got {cfg.eval_batch_size}; expected >= 1")
    if cfg.loop not in LOOPS:
        raise ValueError(f"loop: got {cfg.loop!r}; expected one of {', '.join(LOOPS)}")
    if not isinstance(cfg.data_parallel, bool):
        raise ValueError(f"data_parallel: got {cfg.data_parallel!r}; expected True or False")


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Adam, or SGD with (heavy-ball) momentum, as torch.optim builds them: weight decay is
    added to the gradient before the update (torch's `weight_decay`, coupled L2)."""
    check_train_config(cfg)
    if cfg.optimizer == "adam":
        opt = optax.adam(cfg.learning_rate)  # torch defaults: b1 0.9, b2 0.999, eps 1e-8 outside the sqrt
    else:
        opt = optax.sgd(cfg.learning_rate, momentum=cfg.momentum if cfg.momentum > 0 else None)
    if cfg.weight_decay > 0:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    return opt


class TrainState(NamedTuple):
    """Everything a fit changes, as array pytrees (the graphdef stays in the Trainer)."""

    params: nnx.State  # nnx.Param variables
    batch_stats: nnx.State  # nnx.BatchStat variables (empty for models without BatchNorm)
    opt_state: Any  # optax state over params


class TrainStats(NamedTuple):
    epochs: int  # epochs run
    train_accuracy: float  # the last epoch's accuracy (correct in trained batches / labelled)


def min_correct_to_stop(stop_accuracy: float, labelled: int) -> int:
    """Smallest correct count c with c / labelled >= stop_accuracy in float64, the original's
    Python comparison; compared as integers on device, so float32 rounding cannot move it.
    Above `labelled` when no count reaches it (stop_accuracy > 1: train for max_epochs)."""
    c = max(0, math.ceil(stop_accuracy * labelled))
    while c > 0 and (c - 1) / labelled >= stop_accuracy:
        c -= 1
    while c / labelled < stop_accuracy:
        c += 1
    return c


def _layout(tree) -> list:
    """(path, shape, dtype) of every array leaf: equal for two instances of one architecture."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(path), jnp.shape(x), jnp.result_type(x)) for path, x in leaves]


class Trainer:
    """Fits one model family on a fixed-size pool; see `make_trainer`."""

    def __init__(self, model: nnx.Module, cfg: TrainConfig, *, pool_size: int, max_labelled: int | None = None,
                 mesh: Mesh | None = None):
        check_train_config(cfg)
        if pool_size < 1:
            raise ValueError(f"pool_size: got {pool_size}; expected >= 1")
        if mesh is not None and cfg.batch_size % mesh_size(mesh):
            raise ValueError(
                f"batch_size: got {cfg.batch_size}; expected a multiple of the mesh size {mesh_size(mesh)} "
                "(each device trains on batch_size / mesh size rows of every batch)"
            )
        if max_labelled is None:
            max_labelled = pool_size
        if not 1 <= max_labelled <= pool_size:
            raise ValueError(f"max_labelled: got {max_labelled}; expected in [1, pool_size={pool_size}] or None")
        self.model = model
        self.cfg = cfg
        self.pool_size = pool_size
        self.max_labelled = max_labelled
        self.mesh = mesh
        self.num_classes = int(model.num_classes)
        self.optimizer = make_optimizer(cfg)
        views = {
            train: nnx.view(model, deterministic=not train, use_running_average=not train, raise_if_not_found=False)
            for train in (True, False)
        }
        self._graphdef_train, _, _, rest = nnx.split(views[True], nnx.Param, nnx.BatchStat, ...)
        if jax.tree.leaves(rest):
            raise ValueError(
                "model: holds state other than nnx.Param / nnx.BatchStat (e.g. an RNG stream); "
                "build Dropout without rngs, the trainer passes dropout keys explicitly"
            )
        self._graphdef_eval = nnx.split(views[False], nnx.Param, nnx.BatchStat)[0]
        # MC dropout (see mc_logits): dropout on, BatchNorm on its running averages.
        mc_view = nnx.view(model, deterministic=False, use_running_average=True, raise_if_not_found=False)
        self._graphdef_mc = nnx.split(mc_view, nnx.Param, nnx.BatchStat)[0]
        self._mc_path = _mc_path(model)
        self.loop = resolve_loop(cfg.loop, model)
        self._fit = jax.jit(self._fit_impl)
        self._pack = jax.jit(self._pack_impl)
        self._epoch_order = jax.jit(self._epoch_order_impl)
        self._step = jax.jit(self._step_impl, donate_argnums=(0,))
        self._eval = jax.jit(self._eval_impl, static_argnames="outputs")
        self._eval_block = jax.jit(self._eval_block_impl)
        self._correct = jax.jit(self._correct_impl)
        self._mc = jax.jit(self._mc_impl, static_argnames="passes")
        self._mc_block = jax.jit(self._mc_block_impl)
        self._mc_head = jax.jit(self._mc_head_impl, static_argnames="passes")

    # ---- state ------------------------------------------------------------------------------
    def init_state(self, model: nnx.Module | None = None) -> TrainState:
        """From the model's current weights, with a fresh optimiser state. `model` (default: the
        trainer's own) may be another instance of the same architecture, e.g. the next seed's
        initial weights: the compiled fit is reused."""
        model = self.model if model is None else model
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        if model is not self.model:
            own = nnx.split(self.model, nnx.Param, nnx.BatchStat)[1:]
            if _layout((params, batch_stats)) != _layout(own):
                raise ValueError("model: a different architecture from the trainer's; make a trainer for it")
        return self._put(TrainState(params, batch_stats, self.optimizer.init(params)))

    def merge(self, state: TrainState, *, train: bool = False) -> nnx.Module:
        """A model (eval view unless train=True) carrying `state`'s weights."""
        graphdef = self._graphdef_train if train else self._graphdef_eval
        return nnx.merge(graphdef, state.params, state.batch_stats, copy=True)  # no aliasing of `state`

    def head_params(self, state: TrainState) -> LinearHead:
        return linear_head_params(self.merge(state))

    head_apply = staticmethod(linear_head_apply)

    # ---- mesh placement (all no-ops without a mesh) ---------------------------------------
    def _put(self, tree):
        """Outside jit: leaves already on the mesh's devices (e.g. rows split by put_rows) stay
        as they are, the rest are replicated over the mesh, so one jitted program sees them all."""
        if self.mesh is None:
            return tree
        devices, whole = set(self.mesh.devices.flat), replicated(self.mesh)

        def put(a):
            return a if isinstance(a, jax.Array) and a.sharding.device_set == devices else jax.device_put(a, whole)

        return jax.tree.map(put, tree)

    def _split_rows(self, a):
        """Inside jit: `a` [B, ...] split over the mesh along rows (a batch, an eval block)."""
        return a if self.mesh is None else jax.lax.with_sharding_constraint(a, row_sharding(self.mesh, a.ndim))

    def _replicate(self, tree):
        """Inside jit: every leaf whole on every device (params, optimiser state)."""
        return tree if self.mesh is None else jax.lax.with_sharding_constraint(tree, replicated(self.mesh))

    def _pool_rows(self) -> tuple[int, ...]:
        """Row counts accepted for the pool x and y: pool_size, or (on a mesh) pool_size padded
        to a multiple of the mesh size, as `alfamix_jax.selection.mesh.put_rows` lays it out."""
        if self.mesh is None:
            return (self.pool_size,)
        return tuple(sorted({self.pool_size, padded_rows(self.pool_size, mesh_size(self.mesh))}))

    # ---- training ---------------------------------------------------------------------------
    def train(self, state: TrainState, x, y, labelled, key) -> tuple[TrainState, TrainStats]:
        """Fits on the labelled rows. x: [N, ...] float32 pool, y: [N] int (unlabelled rows'
        values are never read), labelled: [N] bool, key: a PRNG key. Keep x on device between
        calls (jax.device_put once) so the pool is not copied per fit.

        With a mesh, keep x on the mesh, replicated (jax.device_put(x, replicated(mesh))) or
        split by rows (put_rows(mesh, x); x and y may then carry its padding rows, never read),
        both from alfamix_jax.selection.mesh. Anything else is replicated over the mesh on every call."""
        n, rows = self.pool_size, self._pool_rows()
        if x.shape[0] not in rows:
            raise ValueError(f"x: got {x.shape[0]} rows; expected pool_size={n}" + (
                f" (or {rows[-1]}, padded to the mesh)" if len(rows) > 1 else ""))
        if len(y.shape) != 1 or y.shape[0] not in rows or tuple(labelled.shape) != (n,):
            raise ValueError(f"y, labelled: got shapes {tuple(y.shape)}, {tuple(labelled.shape)}; expected ({n},)")
        mask = np.asarray(labelled)
        if mask.dtype != np.bool_:
            raise ValueError(f"labelled: got dtype {mask.dtype}; expected a bool mask")
        count = int(mask.sum())
        if not 1 <= count <= self.max_labelled:
            raise ValueError(f"labelled: {count} rows marked; expected between 1 and max_labelled={self.max_labelled}")
        y_lab = np.asarray(y)[:n][mask]
        if y_lab.min() < 0 or y_lab.max() >= self.num_classes:
            raise ValueError(
                f"y: labelled rows have labels in [{y_lab.min()}, {y_lab.max()}]; expected [0, {self.num_classes})"
            )
        min_correct = min_correct_to_stop(self.cfg.stop_accuracy, count)
        args = self._put((state, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.asarray(mask), key))
        if self.loop == "host":
            state, epochs, correct = self._fit_on_host(*args, count=count, min_correct=min_correct)
        else:
            state, epochs, correct = self._fit(*args, self._put(jnp.asarray(min_correct, jnp.int32)))
        epochs, correct = jax.device_get((epochs, correct))
        return state, TrainStats(int(epochs), int(correct) / count)

    def _loss(self, params, batch_stats, xb, yb, weight, dropout_key):
        # copy: BatchNorm writes its statistics into fresh Variables of this trace level.
        model = nnx.merge(self._graphdef_train, params, batch_stats, copy=True)
        logits = model(xb, rngs=dropout_key)  # [B, C]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        loss = jnp.sum(weight * ce) / jnp.sum(weight)
        return loss, (logits, nnx.state(model, nnx.BatchStat))

    def _pack_impl(self, labelled):
        """The labelled rows' indices, packed (ascending) into a static buffer of max_labelled slots."""
        count = jnp.sum(labelled, dtype=jnp.int32)
        packed = jnp.nonzero(labelled, size=self.max_labelled, fill_value=0)[0].astype(jnp.int32)
        return packed, count  # [max_labelled], []

    def _epoch_order_impl(self, key, epoch, packed, count):
        """This epoch's visiting order [max_labelled] (the first `count` entries are the labelled
        rows in random order) and its dropout key. One sort of random 31-bit keys; unused slots
        get the largest key (a tie, probability < count^2 / 2^32, keeps index order)."""
        shuffle_key, dropout_key = jax.random.split(jax.random.fold_in(key, epoch))
        capacity = self.max_labelled
        bits = jax.random.bits(shuffle_key, (capacity,), jnp.uint32) >> 1
        sort_key = jnp.where(jnp.arange(capacity) < count, bits, jnp.uint32(0xFFFFFFFF))
        return jax.lax.sort_key_val(sort_key, packed)[1], dropout_key

    def _step_impl(self, inner, x, y, order, count, b, dropout_key):
        """One optimiser step on batch `b` of the epoch's order; inner = (params, batch_stats,
        opt_state, correct so far this epoch). On a mesh the batch's rows are split over the
        devices and the state stays replicated: XLA all-reduces the gradients."""
        params, batch_stats, opt_state, correct = inner
        batch = self.cfg.batch_size
        position = self._split_rows(b * batch + jnp.arange(batch, dtype=jnp.int32))  # [B]
        valid = position < count
        rows = order[position % count]  # wrap the tail onto the epoch's first rows
        xb, yb = self._split_rows(x[rows]), self._split_rows(y[rows])  # [B, ...], [B]
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (_, (logits, batch_stats)), grads = grad_fn(
            params, batch_stats, xb, yb, valid.astype(jnp.float32), jax.random.fold_in(dropout_key, b)
        )
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, batch_stats, opt_state = self._replicate((params, batch_stats, opt_state))
        correct += jnp.sum((jnp.argmax(logits, axis=-1) == yb) & valid, dtype=jnp.int32)
        return params, batch_stats, opt_state, correct

    def _n_batches(self, count):
        batch = self.cfg.batch_size
        return count // batch + (count % batch > 1)  # skip a final 1-row batch

    def _fit_impl(self, state: TrainState, x, y, labelled, key, min_correct):
        """The whole fit as one program: while_loop over epochs, fori_loop over batches."""
        packed, count = self._pack_impl(labelled)
        n_batches = self._n_batches(count).astype(jnp.int32)

        def run_epoch(carry):
            epoch, _, params, batch_stats, opt_state = carry
            order, dropout_key = self._epoch_order_impl(key, epoch, packed, count)
            params, batch_stats, opt_state, correct = jax.lax.fori_loop(
                0, n_batches,
                lambda b, inner: self._step_impl(inner, x, y, order, count, b, dropout_key),
                (params, batch_stats, opt_state, jnp.int32(0)),
            )
            return epoch + 1, correct, params, batch_stats, opt_state

        def keep_going(carry):
            epoch, correct = carry[0], carry[1]
            return (epoch < self.cfg.max_epochs) & (correct < min_correct)

        init = (jnp.int32(0), jnp.int32(-1), state.params, state.batch_stats, state.opt_state)
        epoch, correct, params, batch_stats, opt_state = jax.lax.while_loop(keep_going, run_epoch, init)
        return TrainState(params, batch_stats, opt_state), epoch, correct

    def _fit_on_host(self, state: TrainState, x, y, labelled, key, *, count: int, min_correct: int):
        """The same fit driven from Python: one jitted step per batch, one host read per epoch."""
        packed, count_array = self._pack(labelled)
        # Copy: the step donates its state buffers, and the caller's `state` must stay valid.
        inner = jax.tree.map(jnp.copy, (state.params, state.batch_stats, state.opt_state))
        epoch, correct = 0, -1
        while epoch < self.cfg.max_epochs and correct < min_correct:
            order, dropout_key = self._epoch_order(key, jnp.int32(epoch), packed, count_array)
            inner = (*inner, jnp.int32(0))
            for b in range(int(self._n_batches(count))):
                inner = self._step(inner, x, y, order, count_array, jnp.int32(b), dropout_key)
            *inner, correct = inner
            correct = int(correct)
            epoch += 1
        return TrainState(*inner), epoch, correct

    # ---- evaluation -------------------------------------------------------------------------
    def _eval_impl(self, params, batch_stats, x, outputs: str):
        """Eval mode over fixed blocks of rows (see `_blocked`); the last block is shifted back to
        end at the last row (overlapping the one before) instead of padding the pool."""
        m = x.shape[0]
        x, rows, block, n_blocks = self._blocked(x)

        def run_block(i):
            xb = jax.lax.dynamic_slice_in_dim(x, block_start(rows, block, i), block, axis=0)
            return self._eval_block_impl(params, batch_stats, xb)

        zs, logits = jax.lax.map(run_block, jnp.arange(n_blocks))  # [n_blocks, block, D], [n_blocks, block, C]
        return _select_outputs(_unblock(zs, m, rows), _unblock(logits, m, rows), outputs)

    def _eval_block_impl(self, params, batch_stats, xb):
        model = nnx.merge(self._graphdef_eval, params, batch_stats)
        z = model.embed(self._split_rows(xb))  # [block, D]
        return z, model.head(z)

    def _eval_on_host(self, params, batch_stats, x, outputs: str):
        """`_eval_impl` with the loop over blocks in Python (see TrainConfig.loop)."""
        m = x.shape[0]
        x, rows, block, n_blocks = self._blocked(x)
        starts = [min(i * block, rows - block) for i in range(n_blocks)]
        parts = [self._eval_block(params, batch_stats, jax.lax.dynamic_slice_in_dim(x, s, block)) for s in starts]
        zs, logits = (jnp.stack([p[k] for p in parts]) for k in (0, 1))  # [n_blocks, block, ...]
        return _select_outputs(_unblock(zs, m, rows), _unblock(logits, m, rows), outputs)

    def _run_eval(self, state, x, outputs: str):
        x = self._check_eval_input(x)
        params, batch_stats = self._put((state.params, state.batch_stats))
        if self.loop == "host":
            return self._eval_on_host(params, batch_stats, x, outputs)
        return self._eval(params, batch_stats, x, outputs=outputs)

    def _check_eval_input(self, x):
        """x [M, ...] as float32, on the mesh when there is one."""
        if x.shape[0] < 1:
            raise ValueError(f"x: got {x.shape[0]} rows; expected at least one")
        return self._put(jnp.asarray(x, jnp.float32))

    def embed(self, state: TrainState, x):
        """x: [M, ...] -> embeddings [M, D] (eval mode)."""
        return self._run_eval(state, x, "embed")

    def logits(self, state: TrainState, x):
        """x: [M, ...] -> logits [M, C] (eval mode)."""
        return self._run_eval(state, x, "logits")

    def embed_and_logits(self, state: TrainState, x):
        """x: [M, ...] -> ([M, D], [M, C]) (eval mode)."""
        return self._run_eval(state, x, "both")

    def _correct_impl(self, params, batch_stats, x, y):
        logits = self._eval_impl(params, batch_stats, x, "logits")
        return jnp.sum(jnp.argmax(logits, axis=-1) == y, dtype=jnp.int32)

    def evaluate(self, state: TrainState, x, y) -> float:
        """Test accuracy (eval mode). x: [M, ...], y: [M] int."""
        x = self._check_eval_input(x)
        if tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"y: got shape {tuple(y.shape)}; expected ({x.shape[0]},)")
        params, batch_stats, y = self._put((state.params, state.batch_stats, jnp.asarray(y, jnp.int32)))
        if self.loop == "host":
            logits = self._eval_on_host(params, batch_stats, x, "logits")
            correct = jnp.sum(jnp.argmax(logits, axis=-1) == y, dtype=jnp.int32)
        else:
            correct = self._correct(params, batch_stats, x, y)
        return int(jax.device_get(correct)) / x.shape[0]

    # ---- MC dropout -------------------------------------------------------------------------
    def mc_logits(self, state: TrainState, x, key, *, passes: int):
        """x: [M, ...] -> logits of `passes` stochastic forward passes [T, M, C] (MC dropout,
        Gal & Ghahramani 2016), for BALD and other Bayesian strategies.

        Dropout is on (a fresh mask per pass), BatchNorm uses its running averages (eval mode),
        and no state is updated: pass t is the deterministic eval network with only dropout
        sampled. The original calls `clf.train()` for these passes, which also switches
        BatchNorm to the batch's own statistics (and, under no_grad, still updates the running
        averages in place); we keep BatchNorm in eval mode so a row's prediction does not depend
        on which rows share its batch and the trained model is left untouched. The two agree for
        models without BatchNorm (MLP, CNN).

        With the model's `dropout` rate 0 (the default, as in the original's MLPNet) every pass
        equals the eval logits, so BALD's mutual information is 0 everywhere: build the model
        with dropout > 0 (e.g. 0.5, the original Net1-Net4's F.dropout) for MC strategies.

        Blocked like the eval functions (eval_batch_size rows, see `_blocked`; the last block
        shifted back to end at row M) and honouring `loop` the same way. The mask of pass t on block b is drawn from
        fold_in(fold_in(key, t), b): same key (and eval_batch_size), same passes, on either loop.
        For our models, whose only Dropout acts on the embedding as the last step of `embed`,
        the network body runs once (it is deterministic) and only dropout + the linear head run
        per pass: T times cheaper, same masks, same result up to float rounding. Other models
        run the whole network per pass.
        """
        if isinstance(passes, bool) or not isinstance(passes, numbers.Integral) or passes < 1:
            raise ValueError(f"passes: got {passes!r}; expected an int >= 1")
        passes = int(passes)
        x = self._check_eval_input(x)
        if self._mc_path == "deterministic":  # no dropout anywhere: every pass is the eval pass
            logits = self._run_eval(state, x, "logits")
            return jnp.broadcast_to(logits[None], (passes, *logits.shape))
        params, batch_stats, key = self._put((state.params, state.batch_stats, key))
        if self._mc_path == "embedding":
            z = self._run_eval(state, x, "embed")  # [M, D], the body in eval mode, once
            return self._mc_head(params, batch_stats, z, key, passes=passes)
        if self.loop == "host":
            return self._mc_on_host(params, batch_stats, x, key, passes)
        return self._mc(params, batch_stats, x, key, passes=passes)

    def _blocked(self, x):
        """x [M, ...] -> (x padded to `rows`, rows, rows per block, number of blocks) for
        evaluating it in blocks. A block is min(eval_batch_size, M) rows; on a mesh it is rounded
        up to a multiple of the mesh size (each device evaluates block / mesh size rows of it), and
        when that exceeds M, x is zero-padded to `rows` = block rows (padding outputs are
        dropped). Without a mesh rows = M and x is returned as it is."""
        m = x.shape[0]
        block = min(self.cfg.eval_batch_size, m)
        if self.mesh is not None:
            block = padded_rows(block, mesh_size(self.mesh))
        rows = max(m, block)
        return _pad_rows(x, rows), rows, block, -(-rows // block)

    def _mc_block_impl(self, params, batch_stats, xb, key, t, b):
        """One stochastic pass of the whole network on one block: [block, ...] -> [block, C]."""
        model = nnx.merge(self._graphdef_mc, params, batch_stats)
        return model(self._split_rows(xb), rngs=_mc_key(key, t, b))

    def _mc_impl(self, params, batch_stats, x, key, passes: int):
        """All passes over all blocks as one program (lax.map over (pass, block) pairs)."""
        m = x.shape[0]
        x, rows, block, n_blocks = self._blocked(x)

        def run(i):
            t, b = i // n_blocks, i % n_blocks
            xb = jax.lax.dynamic_slice_in_dim(x, block_start(rows, block, b), block, axis=0)
            return self._mc_block_impl(params, batch_stats, xb, key, t, b)

        out = jax.lax.map(run, jnp.arange(passes * n_blocks))  # [T * n_blocks, block, C]
        out = out.reshape(passes, n_blocks, block, out.shape[-1])
        return jax.vmap(lambda a: _unblock(a, m, rows))(out)  # [T, M, C]

    def _mc_on_host(self, params, batch_stats, x, key, passes: int):
        """`_mc_impl` with the loops over passes and blocks in Python (see TrainConfig.loop)."""
        m = x.shape[0]
        x, rows, block, n_blocks = self._blocked(x)
        starts = [min(b * block, rows - block) for b in range(n_blocks)]
        passes_out = []
        for t in range(passes):
            parts = [
                self._mc_block(params, batch_stats, jax.lax.dynamic_slice_in_dim(x, s, block), key,
                               jnp.int32(t), jnp.int32(b))
                for b, s in enumerate(starts)
            ]
            passes_out.append(_unblock(jnp.stack(parts), m, rows))
        return jnp.stack(passes_out)  # [T, M, C]

    def _mc_head_impl(self, params, batch_stats, z, key, passes: int):
        """Dropout + head on eval embeddings z [M, D], in the same blocks and with the same keys
        as `_mc_impl`, so the masks are those the whole network would draw."""
        m = z.shape[0]
        z, rows, block, n_blocks = self._blocked(z)

        def run(i):
            t, b = i // n_blocks, i % n_blocks
            model = nnx.merge(self._graphdef_mc, params, batch_stats)
            zb = jax.lax.dynamic_slice_in_dim(z, block_start(rows, block, b), block, axis=0)
            return model.head(model._finish_embedding(self._split_rows(zb), _mc_key(key, t, b)))

        out = jax.lax.map(run, jnp.arange(passes * n_blocks))  # [T * n_blocks, block, C]
        out = out.reshape(passes, n_blocks, block, out.shape[-1])
        return jax.vmap(lambda a: _unblock(a, m, rows))(out)  # [T, M, C]


def _mc_key(key, t, b):
    """The dropout key of MC pass t on eval block b."""
    return jax.random.fold_in(jax.random.fold_in(key, t), b)


def _select_outputs(embeddings, logits, outputs: str):
    """"embed", "logits", or both as a pair."""
    return {"embed": embeddings, "logits": logits}.get(outputs, (embeddings, logits))


def _pad_rows(x, rows: int):
    """x [M, ...] with zero rows appended up to `rows` (x itself when rows == M)."""
    extra = rows - x.shape[0]
    return x if extra == 0 else jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))


def _unblock(a, m: int, rows: int):
    """[n_blocks, block, ...] over `rows` (>= m, padded) rows whose last block was shifted back
    to end at row `rows` -> the first m rows [m, ...]."""
    n_blocks, block = a.shape[:2]
    tail = rows - (n_blocks - 1) * block
    out = jnp.concatenate([a[:-1].reshape(-1, *a.shape[2:]), a[-1, block - tail:]], axis=0)
    return out if rows == m else out[:m]


def _mc_path(model: nnx.Module) -> str:
    """How `Trainer.mc_logits` runs this model: "deterministic" (no active Dropout: every pass
    is the eval pass), "embedding" (its only Dropout is `model.dropout`, which our models'
    `_finish_embedding` applies as the last step of `embed`: run the body once), or "network"
    (dropout elsewhere: run the whole network per pass)."""
    dropouts = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Dropout) and m.rate > 0]
    if not dropouts:
        return "deterministic"
    own = getattr(model, "dropout", None)
    if callable(getattr(model, "_finish_embedding", None)) and all(d is own for d in dropouts):
        return "embedding"
    return "network"


def resolve_loop(loop: str, model: nnx.Module) -> str:
    """"auto" -> "host" for a model with convolutions on CPU, else "device" (see TrainConfig.loop)."""
    if loop != "auto":
        return loop
    has_conv = any(isinstance(m, nnx.Conv) for _, m in nnx.iter_graph(model))
    return "host" if has_conv and jax.default_backend() == "cpu" else "device"


def make_trainer(
    model: nnx.Module, cfg: TrainConfig, *, pool_size: int, max_labelled: int | None = None,
    mesh: Mesh | None = None,
) -> Trainer:
    """A trainer for `model` on pools of `pool_size` rows. `max_labelled` (default pool_size)
    bounds how many rows may be labelled; it sizes the per-epoch shuffle, so passing the run's
    final labelled count (e.g. 1100 of a 60000-row pool) makes each epoch's shuffle O(max_labelled)
    instead of O(pool_size). Changing the labelled count below it never recompiles.

    `mesh` (e.g. alfamix_jax.selection.mesh.pool_mesh()): train data-parallel on it. The state is
    replicated over the mesh, every batch split over it along rows (batch_size must be a
    multiple of the mesh size), and eval blocks too (eval_batch_size is rounded up to a multiple
    of the mesh size). States and outputs live on the mesh. None (default): one device, as
    without this argument."""
    return Trainer(model, cfg, pool_size=pool_size, max_labelled=max_labelled, mesh=mesh)
