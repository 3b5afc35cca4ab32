"""MLflow pyfunc wrappers of the VAE and of the deployable recommender.

Both load the same bundle folder (:meth:`Recommender.save`). The recommender reads the online
features of the Feast repo given as ``model_config={"feature_repo": PATH}`` (the work
directory's ``feature_repo``), exactly like the BentoML service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


class VAEModel(mlflow.pyfunc.PythonModel):
    """Input: ``person_sequence`` columns (lists). Output: the top items with VAE scores and
    the interest embedding (latent mean) per row."""

    def load_context(self, context: Any) -> None:
        from training.recommender import Recommender

        self.recommender = Recommender.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from training.trainer import infer

        k = int((params or {}).get("k", 20))
        rows = model_input.to_dict("records")
        inputs = self.recommender.vocab.encode_sequences(rows, self.recommender.sequence_length)
        logits, mu, _ = infer(self.recommender.vae, inputs)
        top = np.argsort(-logits, axis=1)[:, :k]
        items = self.recommender.vocab.items
        return pd.DataFrame(
            {
                "items": [[items[j] for j in row] for row in top],
                "scores": [np.take(logits[i], row).round(5).tolist() for i, row in enumerate(top)],
                "embedding": [m.round(6).tolist() for m in mu],
            }
        )


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """Input: ``person_id`` (and optional ``platform``, ``k``). Output: one row per
    recommendation: person_id, rank, item_id, platform, score, cold_start."""

    def load_context(self, context: Any) -> None:
        import os

        from feast import FeatureStore

        from pipelines.identity import Pseudonymiser
        from serving.engine import Engine
        from training.recommender import Recommender

        repo = (context.model_config or {}).get("feature_repo")
        if not repo:
            raise ValueError('load this model with model_config={"feature_repo": "WORKDIR/feature_repo"}')
        key = os.environ.get("XINTEREST_PSEUDONYM_KEY", "xinterest-local-demo-key-not-for-production")
        recommender = Recommender.load(Path(context.artifacts["bundle"]))
        self.engine = Engine(
            recommender, FeatureStore(repo_path=repo), Pseudonymiser(key), str(recommender.meta.get("version", ""))
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        rows = []
        for record in model_input.to_dict("records"):
            platform = record.get("platform") or None
            k = int(record.get("k") or (params or {}).get("k", 20))
            result = self.engine.recommend(str(record["person_id"]), k=k, platform=platform)
            for item in result.items:
                rows.append(
                    {
                        "person_id": result.person_id,
                        "rank": item.rank,
                        "item_id": item.item_id,
                        "platform": item.platform,
                        "score": item.score,
                        "cold_start": result.cold_start or "",
                    }
                )
        return pd.DataFrame(rows, columns=["person_id", "rank", "item_id", "platform", "score", "cold_start"])
