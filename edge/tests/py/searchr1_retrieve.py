"""Search-R1's retriever client, verbatim in shape: what `search_r1/llm_agent/generation.py`
does with a retrieval server's answer (`_batch_search` then `_passages2string`).

Usage: searchr1_retrieve.py URL QUERIES_JSON
Prints a JSON list with the formatted references of each query.
"""

import json
import sys

import requests


def _passages2string(retrieval_result):
    format_reference = ""
    for idx, doc_item in enumerate(retrieval_result):
        content = doc_item["document"]["contents"]
        title = content.split("\n")[0]
        text = "\n".join(content.split("\n")[1:])
        format_reference += f"Doc {idx+1}(Title: {title}) {text}\n"
    return format_reference


def main():
    url, queries = sys.argv[1], json.loads(sys.argv[2])
    results = requests.post(
        url, json={"queries": queries, "topk": 3, "return_scores": True}
    ).json()["result"]
    print(json.dumps([_passages2string(r) for r in results]))


if __name__ == "__main__":
    main()
