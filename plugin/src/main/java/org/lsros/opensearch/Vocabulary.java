/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * A WordPiece vocabulary read from a {@code vocab.txt} (one term per line, the line number is its id).
 *
 * <p>Loaded vocabularies are cached per file, size and modification time: OpenSearch builds a
 * tokenizer factory several times per index (at creation and at every node start), and parsing
 * 30,522 lines each time would be wasted.
 */
final class Vocabulary {

    static final String UNK = "[UNK]";
    /** BERT's special tokens: typed into a text verbatim, each stays one token (as Hugging Face's added tokens do). */
    private static final List<String> SPECIAL = List.of("[PAD]", UNK, "[CLS]", "[SEP]", "[MASK]");

    private static final Map<String, Vocabulary> CACHE = new ConcurrentHashMap<>();

    private final Path source;
    private final Map<String, Integer> ids;
    private final List<String> specials;
    private final String sha256;

    private Vocabulary(Path source, Map<String, Integer> ids, String sha256) {
        this.source = source;
        this.ids = ids;
        this.sha256 = sha256;
        this.specials = SPECIAL.stream().filter(ids::containsKey).toList();
    }

    /** The vocabulary in {@code file}, from the cache when the file has not changed since it was read. */
    static Vocabulary load(Path file) {
        try {
            String key = file.toAbsolutePath() + "|" + Files.size(file) + "|" + Files.getLastModifiedTime(file).toMillis();
            return CACHE.computeIfAbsent(key, k -> read(file));
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the vocabulary [" + file + "]: " + e, e);
        }
    }

    /** A vocabulary from terms in id order (tests). */
    static Vocabulary of(List<String> terms) {
        return parse(Path.of("<memory>"), String.join("\n", terms).getBytes(StandardCharsets.UTF_8));
    }

    private static Vocabulary read(Path file) {
        try {
            return parse(file, Files.readAllBytes(file));
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the vocabulary [" + file + "]: " + e, e);
        }
    }

    private static Vocabulary parse(Path source, byte[] bytes) {
        Map<String, Integer> ids = new HashMap<>();
        String[] lines = new String(bytes, StandardCharsets.UTF_8).split("\n", -1);
        int count = lines.length > 0 && lines[lines.length - 1].isEmpty() ? lines.length - 1 : lines.length;
        for (int i = 0; i < count; i++) {
            ids.put(lines[i].stripTrailing(), i); // a repeated term keeps its last id, as tokenizers does
        }
        if (ids.containsKey(UNK) == false) {
            throw new IllegalArgumentException("the vocabulary [" + source + "] has no " + UNK + " token");
        }
        return new Vocabulary(source, ids, sha256(bytes));
    }

    private static String sha256(byte[] bytes) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this JVM", e);
        }
    }

    boolean contains(String term) {
        return ids.containsKey(term);
    }

    int size() {
        return ids.size();
    }

    /** The special tokens of this vocabulary that a text may contain verbatim. */
    List<String> specials() {
        return specials;
    }

    /** SHA-256 of the file's bytes, lowercase hex: what an index's {@code vocab_sha256} setting records. */
    String sha256() {
        return sha256;
    }

    Path source() {
        return source;
    }
}
