"""Evaluation on held-out slides: image->expression retrieval recall@k, ridge probes for genes and labels.

* Retrieval: every held-out tile queries the held-out expression embeddings (cosine similarity);
  recall@k is the fraction whose own spot is among the k nearest.
* Linear probe: ridge regression from frozen image embeddings to the panel's expression, fit on the
  training slides' embeddings, scored on the held-out slides by Pearson r per gene (and the mean).
* Label probe: the same ridge onto one-hot label classes (argmax predicts), fit on the training slides'
  labelled spots, scored on the held-out slides' labelled spots by accuracy and balanced accuracy, next
  to the majority-class baseline.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from stlake.train.loop import autocast, model_device, to_device, unwrap

DEFAULT_KS = (1, 5, 10)


@torch.no_grad()
def embed(model: nn.Module, batches: Iterable[dict[str, Any]], max_batches: Optional[int] = None,
          amp: Optional[bool] = None) -> dict[str, Any]:
    """Frozen embeddings of every batch (eval mode), as numpy arrays.

    Returns ``image_emb`` / ``expr_emb`` (N x D, unit norm), ``image_features`` (N x F, trunk output),
    ``expression`` (N x G) and the ``slide_id`` / ``spot_id`` / ``label`` lists.
    """
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    device = model_device(inner)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image_emb", "expr_emb", "image_features", "expression")}
    ids: dict[str, list[Any]] = {"slide_id": [], "spot_id": [], "label": []}
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        image, expression = to_device(batch, device)
        with autocast(device, amp):
            features = inner.image_features(image)
            image_emb = nn.functional.normalize(inner.image_proj(features), dim=-1)
            expr_emb = inner.encode_expression(expression)
        for key, value in (("image_emb", image_emb), ("expr_emb", expr_emb), ("image_features", features),
                           ("expression", expression)):
            parts[key].append(value.float().cpu().numpy())
        n = image.shape[0]
        for key in ids:
            ids[key].extend(list(batch.get(key, [None] * n)))
    inner.train(was_training)
    out: dict[str, Any] = {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in parts.items()}
    out.update(ids)
    return out


def retrieval_ranks(query: np.ndarray, gallery: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """0-based rank of each query's own gallery row (row i) among all rows, by descending dot product."""
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32)
    ranks = []
    for start in range(0, q.shape[0], chunk):
        sims = q[start:start + chunk] @ g.t()
        own = sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])]
        ranks.append((sims > own[:, None]).sum(1))
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def retrieval_recall(query: np.ndarray, gallery: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``{"recall@k": fraction of queries whose own row is in the top k}`` (row i pairs with row i)."""
    ranks = retrieval_ranks(query, gallery)
    return {f"recall@{k}": float((ranks < k).mean()) if len(ranks) else float("nan") for k in ks}


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge on centred data: ``(W, b)`` with ``y ~ x @ W + b``; the intercept is not penalised."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ yc)
    return weights, y_mean - x_mean @ weights


def predict_ridge(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x @ weights + bias`` in float64 (a :func:`fit_ridge` model applied)."""
    return np.asarray(x, np.float64) @ weights + bias


def pearson_per_column(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``pred`` with the same column of ``true`` (NaN where either is constant)."""
    p = np.asarray(pred, np.float64) - np.mean(pred, 0)
    t = np.asarray(true, np.float64) - np.mean(true, 0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(0) / np.where(denom > 0, denom, 1.0), np.nan)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 alpha: float = 1.0, gene_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Ridge from embeddings to expression, fit on train, scored on test.

    Returns ``pearson_mean`` (nan-mean over genes), ``pearson_per_gene`` ({gene: r}, or a list without
    names) and ``n_genes_scored`` (genes not constant on the test set).
    """
    weights, bias = fit_ridge(train_x, train_y, alpha)
    r = pearson_per_column(predict_ridge(test_x, weights, bias), test_y)
    finite = np.isfinite(r)
    per_gene: Any = [float(v) for v in r]
    if gene_names is not None:
        per_gene = {str(name): float(v) for name, v in zip(gene_names, r)}
    return {"pearson_mean": float(np.mean(r[finite])) if finite.any() else float("nan"),
            "pearson_per_gene": per_gene, "n_genes_scored": int(finite.sum())}


def label_probe(train_x: np.ndarray, train_labels: Sequence[Optional[str]], test_x: np.ndarray,
                test_labels: Sequence[Optional[str]], alpha: float = 1.0) -> dict[str, Any]:
    """Ridge onto one-hot labels, fit on the labelled training spots, scored on the labelled held-out spots.

    Classes are the training spots' labels; held-out spots whose label no training spot has are not scored.
    Returns ``label_accuracy``, ``label_balanced_accuracy`` (mean recall over the held-out classes),
    ``label_majority_baseline`` (accuracy of always predicting the commonest training class),
    ``n_label_classes`` and ``n_labelled_holdout`` (NaN scores when there is nothing to fit or score).
    """
    classes = sorted({label for label in train_labels if label is not None})
    index = {label: i for i, label in enumerate(classes)}
    train_rows = [i for i, label in enumerate(train_labels) if label is not None]
    test_rows = [i for i, label in enumerate(test_labels) if label is not None and label in index]
    result: dict[str, Any] = {"label_accuracy": float("nan"), "label_balanced_accuracy": float("nan"),
                              "label_majority_baseline": float("nan"), "n_label_classes": len(classes),
                              "n_labelled_holdout": len(test_rows)}
    if len(classes) < 2 or not test_rows:
        return result
    train_y = np.array([index[str(train_labels[i])] for i in train_rows])
    test_y = np.array([index[str(test_labels[i])] for i in test_rows])
    weights, bias = fit_ridge(np.asarray(train_x)[train_rows], np.eye(len(classes))[train_y], alpha)
    predicted = predict_ridge(np.asarray(test_x)[test_rows], weights, bias).argmax(1)
    recalls = [float((predicted[test_y == c] == c).mean()) for c in np.unique(test_y)]
    result.update(label_accuracy=float((predicted == test_y).mean()), label_balanced_accuracy=float(np.mean(recalls)),
                  label_majority_baseline=float((test_y == np.bincount(train_y).argmax()).mean()))
    return result


def evaluate_embeddings(train: dict[str, Any], holdout: dict[str, Any], alpha: float = 1.0,
                        ks: Sequence[int] = DEFAULT_KS, gene_names: Optional[Sequence[str]] = None,
                        probe_on: str = "image_emb") -> dict[str, Any]:
    """Retrieval on ``holdout`` and the linear probe train -> holdout, from :func:`embed` outputs."""
    metrics: dict[str, Any] = {"n_train": int(len(train["expression"])), "n_holdout": int(len(holdout["expression"]))}
    metrics.update(retrieval_recall(holdout["image_emb"], holdout["expr_emb"], ks))
    metrics.update(linear_probe(train[probe_on], train["expression"], holdout[probe_on], holdout["expression"],
                                alpha, gene_names))
    metrics.update(label_probe(train[probe_on], train["label"], holdout[probe_on], holdout["label"], alpha))
    return metrics


def evaluate(model: nn.Module, train_batches: Iterable[dict[str, Any]],
             holdout_batches: Iterable[dict[str, Any]], alpha: float = 1.0,
             ks: Sequence[int] = DEFAULT_KS, gene_names: Optional[Sequence[str]] = None,
             max_train_batches: Optional[int] = None, probe_on: str = "image_emb") -> dict[str, Any]:
    """Embed train and held-out batches with the frozen model, then :func:`evaluate_embeddings`."""
    train = embed(model, train_batches, max_batches=max_train_batches)
    holdout = embed(model, holdout_batches)
    return evaluate_embeddings(train, holdout, alpha, ks, gene_names, probe_on)
