"""Metric formulas, as pure functions of per-sample numbers (reference: docs/metrics.md).

Inputs are token-mean NLLs (`avgNLL`), so P̃ = exp(-avgNLL) is the per-token geometric-mean probability.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy.stats import ks_2samp


@functools.cache
def _rouge(stemmer: bool):
    """rouge-score's ROUGE-L scorer, built on first use (importing it pulls in nltk: 2 s per process)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)


def probability(nll: np.ndarray) -> np.ndarray:
    """P̃(a|q) = exp(-avgNLL) per sample."""
    return np.exp(-np.asarray(nll, dtype=np.float64))


def normalized_probability(true_nll: np.ndarray, perturbed_nll: np.ndarray) -> np.ndarray:
    """P̃(a) / (P̃(a) + Σ_j P̃(a_pert,j)) per sample; perturbed_nll is [N, K]."""
    p_true = probability(true_nll)
    p_pert = probability(perturbed_nll).sum(axis=1)
    return p_true / (p_true + p_pert + 1e-10)


def truth_ratio(true_nll: np.ndarray, perturbed_nll: np.ndarray) -> np.ndarray:
    """R = P̃_pert / P̃_true, with P̃_pert = exp(-mean_j avgNLL(a_pert,j)); per sample."""
    return np.exp(np.asarray(true_nll, dtype=np.float64) - np.asarray(perturbed_nll).mean(axis=1))


def truth_ratio_forget(ratios: np.ndarray) -> float:
    """Forget-set aggregate: mean(min(R, 1/R)); 1 means the model cannot tell true from perturbed."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(r, 1.0 / (r + 1e-10))))


def truth_ratio_utility(ratios: np.ndarray) -> float:
    """Retain / real-authors / world-facts aggregate: mean(max(0, 1 - R)); higher prefers the truth."""
    return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(ratios, dtype=np.float64))))


def rouge_l_recall(references: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """ROUGE-L recall (stemmed) of each prediction against its reference."""
    return np.array([_rouge(True).score(ref, pred)["rougeL"].recall
                     for ref, pred in zip(references, predictions, strict=True)])


def forget_quality(unlearned_ratios: np.ndarray, retain_model_ratios: np.ndarray) -> float:
    """p-value of the two-sided KS test between the forget-set truth ratios of the unlearned model and of
    the retain reference model. Invariant to using R or 1/R for both."""
    return float(ks_2samp(np.asarray(unlearned_ratios), np.asarray(retain_model_ratios)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is 0 (TOFU's model utility collapses with one zero component)."""
    v = np.asarray(values, dtype=np.float64)
    if np.any(v < 0):
        raise ValueError(f"harmonic mean of negative values {v.tolist()}")
    if np.any(v == 0):
        return 0.0
    return float(len(v) / np.sum(1.0 / v))


# MUSE (copyright) and WAGLE's continuation metrics --------------------------------------------------

def rouge_l_f1(references: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 without stemming (MUSE's VerbMem and KnowMem), per sample, on a 0-1 scale."""
    return np.array([_rouge(False).score(ref, pred)["rougeL"].fmeasure
                     for ref, pred in zip(references, predictions, strict=True)])


def bleu(references: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """Sentence BLEU (sacrebleu defaults) per sample, divided by 100 to a 0-1 scale."""
    from sacrebleu.metrics import BLEU

    scorer = BLEU(effective_order=True)
    return np.array([scorer.sentence_score(pred, [ref]).score / 100.0
                     for ref, pred in zip(references, predictions, strict=True)])


def min_k_score(logprobs: np.ndarray, k: float = 0.4) -> float:
    """Min-K% membership score of one text: minus the mean of its lowest max(1, int(n·k)) token log-probs.
    Higher means less member-like."""
    lp = np.sort(np.asarray(logprobs, dtype=np.float64))
    if lp.size == 0:
        raise ValueError("min-k score of a text with no scored tokens")
    return float(-lp[: max(1, int(lp.size * k))].mean())


def min_k_plus_plus_score(logprobs: np.ndarray, mu: np.ndarray, var: np.ndarray, k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al. 2024) of one text: each token's (log p(x_t) - μ_t) / σ_t, with μ_t and σ_t² the
    mean and variance of log p over the vocabulary under the model's distribution at t (σ_t² floored at 1e-6),
    then minus the mean of the lowest max(1, int(n·k)). Higher means less member-like."""
    z = (np.asarray(logprobs, dtype=np.float64) - np.asarray(mu, dtype=np.float64)) / np.sqrt(
        np.maximum(np.asarray(var, dtype=np.float64), 1e-6))
    return min_k_score(z, k)


def zlib_score(mean_nll: float, text: str) -> float:
    """zlib-normalised loss (Carlini et al. 2021): the token-mean NLL over the zlib-compressed length in bytes
    of the text's UTF-8 encoding. Higher means less member-like."""
    import zlib

    return float(mean_nll) / len(zlib.compress(text.encode("utf-8")))


def exact_memorization(hits: np.ndarray) -> float:
    """Share of the answer's tokens that are the model's greedy (argmax) prediction given the true prefix."""
    hits = np.asarray(hits, dtype=bool)
    if hits.size == 0:
        raise ValueError("exact memorization of an answer with no scored tokens")
    return float(hits.mean())


def extraction_strength(hits: np.ndarray) -> float:
    """1 - k/n for the smallest k whose suffix of the answer (tokens k..n-1) is all greedy predictions given
    the true prefix (Carlini et al.'s extraction, as open-unlearning's `extraction_strength` computes it,
    including its floor: when even the last token is missed, k stays n-1 and the score is 1/n)."""
    hits = np.asarray(hits, dtype=bool)
    n = hits.size
    if n == 0:
        raise ValueError("extraction strength of an answer with no scored tokens")
    k = next((i for i in range(n) if hits[i:].all()), n - 1)
    return 1.0 - k / n


def auc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating positives (higher) from negatives: the probability
    that a random positive outscores a random negative, ties counting one half (Mann-Whitney U / n0·n1)."""
    neg = np.asarray(negatives, dtype=np.float64)[:, None]
    pos = np.asarray(positives, dtype=np.float64)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE's PrivLeak AUC: forget texts labelled 0, holdout texts 1, ranked by -score, so a model that
    memorised the forget set (low forget scores) gets an AUC near 0 and one that never saw it about 0.5."""
    return auc(-np.asarray(forget_scores), -np.asarray(holdout_scores))


def privleak(auc_model: float, auc_retain: float) -> float:
    """(AUC - AUC_retain) / AUC_retain × 100: 0 is ideal, negative is under-unlearning, positive over."""
    return (auc_model - auc_retain) / auc_retain * 100.0
