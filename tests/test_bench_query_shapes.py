"""bench/query_shapes.py's query generator: the demo's term counts, the collection's popularity."""

from bench.query_shapes import shaped_queries


def test_shaped_queries_take_their_lengths_from_the_given_ones_and_are_repeatable():
    queries = shaped_queries([3, 7, 21], 50, seed=0)
    assert {len(q) for q in queries} <= {3, 7, 21} and len({len(q) for q in queries}) == 3
    assert all(0.05 <= w <= 2.5 for q in queries for w in q.values())
    assert shaped_queries([3, 7, 21], 50, seed=0) == queries
