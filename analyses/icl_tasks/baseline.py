"""The paper's learnability baseline: a TF-IDF bag-of-words logistic regression trained on the
same demonstrations as the prompt, predicting the query's label.

Words are the model's own tokens of the input (after the tau_PA permutation when there is one),
so the baseline sees exactly what the model sees; a bag of words is blind to a bijection of the
vocabulary, which is why tau_PA is compared with it. With no demonstrations the baseline has
nothing to learn from and predicts a seeded uniform choice among the candidates; with
demonstrations of a single label it predicts that label.

Owns: ``bow_predict``. Must not: import scikit-learn at module level (1.8 s: a ``LazyModule``),
or see anything the model does not.
"""

from __future__ import annotations

import numpy as np

from ckptlab.lazy import LazyModule

sklearn_text = LazyModule("sklearn.feature_extraction.text")  # 1.8 s to import: at first use
sklearn_linear = LazyModule("sklearn.linear_model")


def _documents(token_lists: list[list[int]]) -> list[str]:
    return [" ".join(f"t{t}" for t in tokens) for tokens in token_lists]


def bow_predict(
    demo_inputs: list[list[int]],  # token ids of each demonstration's input
    demo_labels: list[int],  # candidate index of each demonstration
    query_input: list[int],
    n_candidates: int,
    rng: np.random.Generator,
) -> int:
    """The candidate index a TF-IDF + logistic regression fit on the demonstrations predicts."""
    if not demo_labels:
        return int(rng.integers(n_candidates))
    if len(set(demo_labels)) == 1:
        return demo_labels[0]
    vectorizer = sklearn_text.TfidfVectorizer(token_pattern=r"\S+", lowercase=False)
    features = vectorizer.fit_transform(_documents(demo_inputs))
    classifier = sklearn_linear.LogisticRegression(max_iter=200).fit(features, demo_labels)
    return int(classifier.predict(vectorizer.transform(_documents([query_input])))[0])
