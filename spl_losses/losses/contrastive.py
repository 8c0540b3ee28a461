"""A contrastive auxiliary loss for SPML training: a projection head plus NT-Xent over two views.

``total = main_loss + cl_coef * L_cl``, where ``L_cl`` is SimCLR's NT-Xent over two augmented
views of every image, computed on the L2-normalised output of a projection head
(num_features -> num_features -> ReLU -> 128) applied to the backbone's pooled features. The
supervised variant also counts as positives the views of other images that share an observed
positive class.

This is not a ``loss(logits, targets)`` loss: it needs pooled features of two views and owns
trainable parameters (the projection head), so it is not in the loss registry. Build it with
:class:`ContrastiveAuxiliary` (or ``ContrastiveAuxiliary.from_model(model)``), put its parameters
in the optimizer, and add it to any registered loss.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from ..labels import check_observed_labels
from ._checks import check_number, check_positive_int
from ._citations import CHEN_2020, KHOSLA_2020
from ._distributed import BatchShare, BatchSplit, global_value

__all__ = ["ContrastiveAuxiliary", "nt_xent_loss", "pooled_features"]

DEFAULT_TEMPERATURE = 0.07
DEFAULT_PROJECTION_DIM = 128


def _check_temperature(temperature) -> float:
    return check_number("temperature", temperature, minimum=0.0, strict_minimum=True)


def nt_xent_loss(
        embeddings_view1: torch.Tensor,
        embeddings_view2: torch.Tensor,
        temperature: float = DEFAULT_TEMPERATURE,
        targets: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2B embeddings of two views, or its supervised variant.

    The 2B embeddings are L2-normalised and compared by cosine similarity / temperature. For each
    of the 2B anchors the softmax runs over the 2B - 1 other embeddings; the loss of an anchor is
    minus the mean log-probability of its positives, and the result is the mean over anchors.

    - Unsupervised (``targets=None``): the only positive is the other view of the same image, the
      other 2B - 2 embeddings are negatives.
    - Supervised (``targets`` given): the positives are every other embedding whose image shares
      an observed positive class (``targets == 1``) with the anchor's image, which always includes
      the anchor's other view; a row without any positive keeps only its other view.

    Computed in float32 whatever the input dtype.

    Args:
        embeddings_view1: (B, D) embeddings of the first views.
        embeddings_view2: (B, D) embeddings of the second views, row i the same image as row i of
            the first.
        temperature: Softmax temperature, finite and > 0 (0.07).
        targets: Optional (B, C) observed labels in {-1, 0, 1} for the supervised variant.

    Returns:
        A scalar float32 tensor.
    """
    temperature = _check_temperature(temperature)
    for name, value in (("embeddings_view1", embeddings_view1), ("embeddings_view2", embeddings_view2)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 2 or value.shape[0] == 0:
            raise ValueError(f"{name} must be 2-D (batch, dim) with batch >= 1, got shape {tuple(value.shape)}")
    if embeddings_view1.shape != embeddings_view2.shape:
        raise ValueError(
            f"the two views must have the same shape, got {tuple(embeddings_view1.shape)} and "
            f"{tuple(embeddings_view2.shape)}")
    batch_size = embeddings_view1.shape[0]
    if targets is not None:
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.dim() != 2 or targets.shape[0] != batch_size:
            raise ValueError(f"targets must have shape ({batch_size}, num_classes), got {tuple(targets.shape)}")
        check_observed_labels(targets)

    z = torch.cat([embeddings_view1, embeddings_view2], dim=0).float()
    z = F.normalize(z, dim=1)
    num_anchors = 2 * batch_size
    device = z.device
    self_mask = torch.eye(num_anchors, dtype=torch.bool, device=device)
    with torch.autocast(device_type=device.type, enabled=False):  # keep the similarities in float32
        similarity = (z @ z.t()) / temperature
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)

    anchors = torch.arange(num_anchors, device=device)
    other_view = (anchors + batch_size) % num_anchors
    if targets is None:
        return -log_prob[anchors, other_view].mean()

    positives = (targets.to(device) > 0).float()
    positives = torch.cat([positives, positives], dim=0)
    positive_mask = (positives @ positives.t()) > 0
    positive_mask[anchors, other_view] = True
    positive_mask &= ~self_mask
    per_anchor = log_prob.masked_fill(~positive_mask, 0.0).sum(dim=1) / positive_mask.sum(dim=1)
    return -per_anchor.mean()


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The (B, D) pooled backbone features of a timm model: ``forward_head(forward_features(x), pre_logits=True)``.

    Args:
        model: A timm model (or a wrapper with the same methods, e.g. ``BoostLU``).
        images: (B, 3, H, W) images.
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"pooled_features needs a timm model with forward_features/forward_head, got {type(model).__name__}")
    features = model.forward_head(model.forward_features(images), pre_logits=True)
    if features.dim() != 2:
        raise ValueError(f"expected (B, D) pooled features from forward_head(pre_logits=True), got shape {tuple(features.shape)}")
    return features


class ContrastiveAuxiliary(BatchSplit, nn.Module):
    """Projection head + NT-Xent: a contrastive auxiliary loss for SPML training.

    NT-Xent is SimCLR's loss (Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020); the supervised variant follows SupCon (Khosla et al., NeurIPS
    2020) with the single observed positives defining the classes. Added to an SPML loss as
    ``total = main + cl_coef * L_cl`` at the request of users of Cole et al.'s code; there are no
    published numbers for it on the SPML benchmark, and it is only meaningful end-to-end.

    The projection head is ``num_features -> hidden_dim -> ReLU -> projection_dim`` (timm's
    ``Mlp``), its output L2-normalised. ``forward`` returns the unweighted ``L_cl``;
    :meth:`combine` returns ``main + cl_coef * L_cl``.

    One training loop (views from :class:`spl_losses.transforms.TwoViewTransform`; the
    classification loss uses the plain training view)::

        aux = ContrastiveAuxiliary.from_model(model, cl_coef=1.0)
        optimizer = torch.optim.Adam([*model.parameters(), *aux.parameters()], lr=1e-5)
        loss_fn = spl_losses.create_loss("an")
        for images, (view1, view2), targets in loader:
            logits = model(images)
            f1, f2 = pooled_features(model, view1), pooled_features(model, view2)
            loss = aux.combine(loss_fn(logits, targets), f1, f2, targets)
            loss.backward(); optimizer.step(); optimizer.zero_grad()

    Args:
        num_features: D, the size of the pooled backbone features.
        hidden_dim: Hidden size of the projection head (default ``num_features``).
        projection_dim: Embedding size (128).
        temperature: NT-Xent temperature (0.07).
        cl_coef: Weight of the contrastive term in :meth:`combine` (finite, >= 0; 1.0, no published value).
        supervised: Use the supervised variant (positives = same observed positive class); then
            ``targets`` must be passed to ``forward``.
    """

    paper = "Chen et al., ICML 2020 (SimCLR); Khosla et al., NeurIPS 2020 (SupCon)"
    citation = CHEN_2020 + "\n" + KHOSLA_2020

    def __init__(
            self,
            num_features: int,
            hidden_dim: Optional[int] = None,
            projection_dim: int = DEFAULT_PROJECTION_DIM,
            temperature: float = DEFAULT_TEMPERATURE,
            cl_coef: float = 1.0,
            supervised: bool = False,
    ):
        super().__init__()
        hidden_dim = num_features if hidden_dim is None else hidden_dim
        for name, value in (("num_features", num_features), ("hidden_dim", hidden_dim), ("projection_dim", projection_dim)):
            check_positive_int(name, value)
        self.temperature = _check_temperature(temperature)
        self.cl_coef = check_number("cl_coef", cl_coef, minimum=0.0)
        self.supervised = bool(supervised)
        self.num_features = num_features
        self.projection = Mlp(num_features, hidden_features=hidden_dim, out_features=projection_dim, act_layer=nn.ReLU)

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs) -> "ContrastiveAuxiliary":
        """Build the auxiliary loss for a timm model's pooled features (``head_hidden_size`` / ``num_features``).

        Args:
            model: A timm model or ``BoostLU`` wrapper.
            **kwargs: Other constructor arguments (``cl_coef``, ``supervised``, ...).
        """
        num_features = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
        if not isinstance(num_features, int):
            raise TypeError(f"{type(model).__name__} exposes no num_features/head_hidden_size; pass num_features")
        return cls(num_features, **kwargs)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 projections of pooled features.

        Args:
            features: (B, num_features) pooled backbone features.
        """
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"features must have shape (batch, {self.num_features}) (pooled backbone features), "
                f"got {tuple(features.shape)}")
        return F.normalize(self.projection(features).float(), dim=1)

    def forward(
            self,
            features_view1: torch.Tensor,
            features_view2: torch.Tensor,
            targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The unweighted contrastive loss ``L_cl`` of two views' pooled features.

        Args:
            features_view1: (B, num_features) pooled features of the first views.
            features_view2: (B, num_features) pooled features of the second views.
            targets: (B, C) observed labels {-1, 0, 1}; required by the supervised variant and
                ignored by the unsupervised one.

        Returns:
            A scalar float32 tensor.
        """
        if self.supervised and targets is None:
            raise ValueError("the supervised contrastive loss needs the batch's observed targets: aux(f1, f2, targets)")
        targets = targets if self.supervised else None
        share = self.batch_share()
        if share is not None:
            return self._forward_split(features_view1, features_view2, targets, share)
        return nt_xent_loss(self.embed(features_view1), self.embed(features_view2), self.temperature, targets=targets)

    def _forward_split(self, features_view1, features_view2, targets, share: BatchShare) -> torch.Tensor:
        """NT-Xent over the global batch's 2B embeddings, gathered from every process (SimCLR's negatives).

        Every process computes the same loss from the gathered embeddings, its own rows carrying their
        graph: its gradient is P times the global loss's, towards its own rows (see
        :mod:`spl_losses.losses._distributed`).
        """
        failure = embeddings = None
        try:
            embeddings = [self.embed(features_view1), self.embed(features_view2)]
            if embeddings[0].shape != embeddings[1].shape:
                raise ValueError(f"the two views must have the same shape, got {tuple(features_view1.shape)} and "
                                 f"{tuple(features_view2.shape)}")
            if targets is not None:
                check_observed_labels(targets)
                if targets.dim() != 2 or targets.shape[0] != embeddings[0].shape[0]:
                    raise ValueError(f"targets must have shape ({embeddings[0].shape[0]}, num_classes), "
                                     f"got {tuple(targets.shape)}")
        except Exception as err:
            failure = err
        rows = embeddings[0].shape[0] if failure is None else 0
        device = getattr(features_view1, "device", None)
        share.gather_header(rows, None, 0, failure, device, name="contrastive header")
        if sum(share.counts) == 0:
            raise ValueError("the contrastive loss needs a batch of at least one image")
        local = embeddings + ([(targets.to(embeddings[0].device) > 0)] if targets is not None else [])
        gathered = share.gather_rows(local, name="contrastive rows")
        start = sum(share.counts[:share.rank])
        for view in (0, 1):  # this process's rows carry their graph
            gathered[view] = torch.cat([gathered[view][:start], embeddings[view],
                                        gathered[view][start + rows:]])
        value = nt_xent_loss(gathered[0], gathered[1], self.temperature,
                             targets=gathered[2].float() if targets is not None else None)
        return global_value(value * share.world_size, value.detach())

    def combine(
            self,
            main_loss: torch.Tensor,
            features_view1: torch.Tensor,
            features_view2: torch.Tensor,
            targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``main_loss + cl_coef * L_cl``.

        Args:
            main_loss: The scalar classification loss (with its regularizer).
            features_view1: (B, num_features) pooled features of the first views.
            features_view2: (B, num_features) pooled features of the second views.
            targets: (B, C) observed labels (needed by the supervised variant).
        """
        return main_loss + self.cl_coef * self(features_view1, features_view2, targets)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, cl_coef={self.cl_coef}, supervised={self.supervised}"
