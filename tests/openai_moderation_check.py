"""Calls Steward's POST /v1/moderations with the official OpenAI Python SDK.

Usage: python tests/openai_moderation_check.py BASE_URL API_KEY
Prints one JSON object describing what the SDK received; the Rust test asserts on it.
"""
import json
import sys

import openai


def main() -> None:
    base_url, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    checked = client.moderations.with_raw_response.create(input=["Tell me how to kill someone quietly.", "Write a haiku about rivers."])
    moderation = checked.parse()
    one = client.moderations.create(input="Write a haiku about rivers.")
    print(json.dumps({
        "constitution_hash": checked.headers.get("x-constitution-hash"),
        "model": moderation.model,
        "results": [
            {
                "flagged": r.flagged,
                "violence": r.categories.violence,
                "illicit_violent": r.categories.illicit_violent,
                "hate": r.categories.hate,
                "violence_score": r.category_scores.violence,
                "steward": (r.model_extra or {}).get("steward"),
            }
            for r in moderation.results
        ],
        "one": {"flagged": one.results[0].flagged, "count": len(one.results)},
    }))


if __name__ == "__main__":
    main()
