"""The network: its description `MLP`, its parameters, and the forward pass.

Layer numbering follows docs/derivation.md: l = 1 is the input layer (a^1 = x, no
parameters), layers l = 2..L carry W^l of shape (N_l, N_{l-1}) and b^l of
shape (N_l,). In code the parameters are a tuple, and ``params[k]`` is layer
l = k + 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import activations as _activations
from manualbp import losses as _losses
from manualbp._initialization import INIT_SCHEMES, check_sizes, draw
from manualbp.activations import Activation
from manualbp.losses import FusedLoss, Loss
from manualbp.parameters import Layer, Params
from manualbp.validation import check_key, check_x64

Array = jax.Array


@dataclasses.dataclass(frozen=True, init=False)
class MLP:
    """A multilayer perceptron z^l = W^l a^{l-1} + b^l, a^l = σ^l(z^l), l = 2..L.

    Frozen and hashable, so it can be a static argument of `jax.jit`.

    Args:
        sizes: (N_1, ..., N_L); N_1 is the input width, N_L the output width.
        hidden: σ^l for the hidden layers l = 2..L-1: a name, an `Activation`,
            or a sequence of those, one per hidden layer.
        output: σ^L, the output function: a name or an `Activation`.
        loss: E, a name or a `Loss`.
        fused: use the fused δ^L = ŷ − y for softmax + cross_entropy and
            sigmoid + binary_cross_entropy (see losses.py). With False, the
            manual path uses the general equation (4) even for those pairs.

    Attributes:
        sizes: (N_1, ..., N_L).
        activations: (σ^2, ..., σ^L); ``activations[k]`` belongs to ``params[k]``.
        loss: the resolved `Loss`: E and ∂E/∂ŷ.
        fused: as the argument.
    """

    sizes: tuple[int, ...]
    activations: tuple[Activation, ...]
    loss: Loss
    fused: bool

    def __init__(
        self,
        sizes: Sequence[int],
        hidden: str | Activation | Sequence[str | Activation] = "tanh",
        output: str | Activation = "identity",
        loss: str | Loss = "mse",
        fused: bool = True,
    ):
        sizes = check_sizes(sizes)
        n_hidden = len(sizes) - 2
        if isinstance(hidden, (str, Activation)):
            hidden = (hidden,) * n_hidden
        elif isinstance(hidden, Sequence):
            hidden = tuple(hidden)
            if len(hidden) != n_hidden:
                raise ValueError(
                    f"hidden: expected one activation per hidden layer ({n_hidden} for "
                    f"sizes={sizes}), got {len(hidden)}"
                )
        else:
            raise TypeError(
                "hidden: expected an activation name, an mbp.Activation or a sequence of "
                f"them, got {type(hidden).__name__}"
            )
        sigmas = []
        for k, spec in enumerate(hidden):
            sigma = _activations.get_activation(spec, argument=f"hidden (layer l={k + 2})")
            if not sigma.elementwise:
                raise ValueError(
                    f"hidden (layer l={k + 2}): {sigma.name!r} is not componentwise; equation (1) "
                    "needs a componentwise σ' (valid hidden activations: "
                    f"{', '.join(_activations.HIDDEN_ACTIVATIONS)})"
                )
            sigmas.append(sigma)
        sigmas.append(_activations.get_activation(output, argument="output"))
        if sigmas[-1] is _activations.softmax and sizes[-1] == 1:  # softmax of one logit ≡ 1
            raise ValueError(
                f"output: softmax over N_L = 1 output unit is always 1, so nothing can be "
                f"learned (sizes={sizes}); for two classes use output='sigmoid' with "
                "loss='binary_cross_entropy', or N_L = 2 with softmax"
            )
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "activations", tuple(sigmas))
        object.__setattr__(self, "loss", _losses.get_loss(loss))
        object.__setattr__(self, "fused", bool(fused))

    def __repr__(self) -> str:
        hidden = [s.name for s in self.hidden]
        hidden = hidden[0] if len(set(hidden)) == 1 else hidden
        return (
            f"MLP(sizes={self.sizes}, hidden={hidden!r}, output={self.output.name!r}, "
            f"loss={self.loss.name!r})"
        )

    @property
    def L(self) -> int:
        """The number of layers, input layer included."""
        return len(self.sizes)

    @property
    def hidden(self) -> tuple[Activation, ...]:
        """(σ^2, ..., σ^{L-1})."""
        return self.activations[:-1]

    @property
    def output(self) -> Activation:
        """σ^L."""
        return self.activations[-1]

    @property
    def fused_loss(self) -> FusedLoss | None:
        """The fused logits-based E and δ^L for (σ^L, E), if there is one."""
        return _losses.fused_loss(self.output, self.loss)

    @property
    def classifier(self) -> bool:
        """Whether targets are classes (softmax, or sigmoid with binary cross-entropy)."""
        return self.output is _activations.softmax or self.loss is _losses.binary_cross_entropy

    def init(self, key: Array, dtype=jnp.float32, scheme: str = "lecun") -> Params:
        """Random parameters, one `Layer` per layer l = 2..L.

        Args:
            key: a `jax.random` key.
            dtype: the parameters' floating dtype.
            scheme: the weight distribution, with n_in = N_{l-1}, n_out = N_l:
                ``"lecun"`` (default) W ~ N(0, 1/n_in), b = 0: keeps the
                variance of z^l near that of a^{l-1} for any σ with slope about
                1 at 0, so every built-in trains from it;
                ``"glorot"`` W ~ N(0, 2/(n_in + n_out)), b = 0;
                ``"he"`` W ~ N(0, 2/n_in), b = 0 (for ReLU-like σ);
                ``"nielsen"`` W, b ~ N(0, 1) (Nielsen's chapter 1);
                ``"nielsen_scaled"`` W ~ N(0, 1/n_in), b ~ N(0, 1) (chapter 3).

        Returns:
            A tuple of `Layer`; ``params[k]`` is layer l = k + 2.
        """
        if scheme not in INIT_SCHEMES:
            raise ValueError(
                f"scheme: unknown init scheme {scheme!r}; expected one of {', '.join(INIT_SCHEMES)}"
            )
        dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
        check_key(key)
        return draw(self.sizes, key, dtype, scheme)

    def params_from(self, weights: Sequence, biases: Sequence, dtype=None) -> Params:
        """Parameters from another implementation's lists of W^l and b^l, l = 2..L.

        Args:
            weights: one array-like per layer, W^l of shape (N_l, N_{l-1}).
            biases: one array-like per layer, b^l of shape (N_l,) or the
                column (N_l, 1) that column-vector code (Nielsen's) uses.
            dtype: the parameters' dtype; default: the arrays' own floating
                dtype. float64 needs JAX's x64 mode (see `check_x64`).

        Returns:
            A tuple of `Layer`, ``params[k]`` is layer l = k + 2.
        """
        n = self.L - 1
        if len(weights) != n or len(biases) != n:
            raise ValueError(
                f"params_from: expected {n} weights and {n} biases for sizes={self.sizes}, "
                f"got {len(weights)} and {len(biases)}"
            )
        params = []
        for k, (W, b) in enumerate(zip(weights, biases, strict=True)):
            l, shape_W, N_l = k + 2, (self.sizes[k + 1], self.sizes[k]), self.sizes[k + 1]
            W, b = np.asarray(W), np.asarray(b)
            if b.shape == (N_l, 1):
                b = b[:, 0]
            if W.shape != shape_W or b.shape != (N_l,):
                raise ValueError(
                    f"params_from (layer l={l}): expected W^{l} of shape {shape_W} and b^{l} of "
                    f"shape ({N_l},) or ({N_l}, 1), got {W.shape} and {b.shape}"
                )
            layer_dtype = np.dtype(dtype) if dtype is not None else np.result_type(W, b)
            if not np.issubdtype(layer_dtype, np.floating):
                layer_dtype = np.dtype(np.float32)
            check_x64(layer_dtype, f"params_from (layer l={l})")
            params.append(Layer(jnp.asarray(W, layer_dtype), jnp.asarray(b, layer_dtype)))
        return tuple(params)


# --- the forward pass (step 1 of docs/derivation.md) ---------------------------


def layer_forward(W: Array, b: Array, a_prev: Array, sigma: Activation) -> tuple[Array, Array]:
    """z^l = W^l a^{l-1} + b^l and a^l = σ^l(z^l) for one example. Shapes: (N_l,)."""
    z = W @ a_prev + b
    return z, sigma.fn(z)


class Forward(NamedTuple):
    """Step 1's record: z^l and a^l of every layer l = 1..L, one index per layer.

    ``z[i]`` and ``a[i]`` belong to the same layer, l = i + 1: ``a[0]`` is
    a^1 = x and ``z[0]`` is None (the input layer computes nothing);
    ``z[-1]`` is z^L and ``a[-1]`` is ŷ = a^L. Layer l's parameters are
    ``params[l - 2]``, so in a loop over ``params[k]`` (layer l = k + 2) the
    layer's own values are ``z[k + 1]``, ``a[k + 1]`` and its input a^{l-1}
    is ``a[k]``.
    """

    z: tuple
    a: tuple


def forward_pass(net: MLP, params: Params, x: Array) -> Forward:
    """Step 1 for one example x (N_1,): every z^l and a^l, aligned by layer (`Forward`)."""
    z, a = [None], [x]
    for (W, b), sigma in zip(params, net.activations, strict=True):
        z_l, a_l = layer_forward(W, b, a[-1], sigma)
        z.append(z_l)
        a.append(a_l)
    return Forward(tuple(z), tuple(a))


def forward_pass_batch(net: MLP, params: Params, X: Array) -> Forward:
    """Step 1 for a batch X (B, N_1): rows are examples, Z^l = A^{l-1} (W^l)ᵀ + b^l.

    The same `Forward` as `forward_pass`, each array with a leading batch axis.
    """
    z, a = [None], [X]
    for (W, b), sigma in zip(params, net.activations, strict=True):
        z_l = a[-1] @ W.T + b[None, :]
        z.append(z_l)
        a.append(sigma.fn(z_l))
    return Forward(tuple(z), tuple(a))


def example_loss(net: MLP, z_L: Array, y_hat: Array, y: Array) -> Array:
    """E for one example from z^L and ŷ: the fused logits form where there is one."""
    fused = net.fused_loss
    if fused is not None:
        return fused.fn(z_L, y)
    return net.loss.fn(y_hat, y)


def mean_loss(net: MLP, params: Params, X: Array, Y: Array) -> Array:
    """The batch mean of E for X (B, N_1) and targets Y (B, N_L)."""
    return mean_loss_of(net, forward_pass_batch(net, params, X), Y)


def mean_loss_of(net: MLP, fwd: Forward, Y: Array) -> Array:
    """The batch mean of E from step 1's z^L and ŷ (B, N_L) and the targets Y."""
    return jnp.mean(jax.vmap(lambda z, a, y: example_loss(net, z, a, y))(fwd.z[-1], fwd.a[-1], Y))


def as_targets(net: MLP, Y: Array, dtype) -> Array:
    """Targets of shape (B, N_L) in ``dtype`` from any accepted form of Y.

    Accepted: (B, N_L); integer class labels of shape (B,) with a softmax
    output, one-hot encoded here; and, when N_L = 1, a vector (B,) read as the
    column (B, 1). `validation.check_batch` rejects everything else first.
    """
    if Y.ndim == 1 and jnp.issubdtype(Y.dtype, jnp.integer) and net.sizes[-1] > 1:
        return jax.nn.one_hot(Y, net.sizes[-1], dtype=dtype)
    if Y.ndim == 1:
        Y = Y[:, None]
    return Y.astype(dtype)
