/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

/**
 * An index with lsr-os's text field, as lsr_os/plugin.py's index_settings() and text_field() make
 * it, for the engine modules' tests (they get it from the core's test jar): both engines must
 * take the same settings.
 */
public final class IndexFixture {
    private IndexFixture() {}

    /** The index settings ({@code {"index": ...}}) at {@code scale}, as JSON. */
    public static String settings(String scale) {
        return """
            {"index": {
              "similarity": {"lsr_os_dot": {"type": "lsr_os_dot", "scale": %s}},
              "analysis": {
                "analyzer": {
                  "lsr_os_folded": {"type": "lsr_os_folded", "delimiter": "\\u0001"},
                  "lsr_os_query": {"type": "custom", "tokenizer": "lsr_os_query_pieces", "filter": ["lsr_os_unique"]}},
                "tokenizer": {"lsr_os_query_pieces": {"type": "lsr_os_wordpiece", "vocab_sha256": "%s"}}},
              "query": {"default_field": ["text"]}}}
            """.formatted(scale, Vocabulary.shipped().sha256());
    }

    /** The mapping of the text field, as JSON. */
    public static final String MAPPING = """
        {"properties": {"text": {"type": "text", "analyzer": "lsr_os_folded", "search_analyzer": "lsr_os_query",
          "index_options": "freqs", "norms": false, "similarity": "lsr_os_dot"}}}
        """;

    /** Two folded documents (scale 65536): "blue star" scores 1.5 + 2.0 on A and 0.5 on B. */
    public static final String DOC_A = "blue\u000198304 star\u0001131072";
    public static final String DOC_B = "red\u000198304 star\u000132768";
}
