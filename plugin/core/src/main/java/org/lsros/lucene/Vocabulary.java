/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.io.IOException;
import java.io.InputStream;
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
 * <p>The BERT-uncased vocabulary ships inside this jar ({@link #shipped()}): reading its own jar
 * needs no permission on either engine (OpenSearch's agent, Elasticsearch's entitlements). Loaded
 * vocabularies are cached (files per path, size and modification time): an engine builds a
 * tokenizer factory several times per index (at creation and at every node start), and parsing
 * 30,522 lines each time would be wasted.
 */
public final class Vocabulary {

    static final String UNK = "[UNK]";
    /** The shipped vocabulary, next to this class in the jar. */
    static final String SHIPPED = "vocab.txt";
    /** BERT's special tokens: typed into a text verbatim, each stays one token (as Hugging Face's added tokens do). */
    private static final List<String> SPECIAL = List.of("[PAD]", UNK, "[CLS]", "[SEP]", "[MASK]");

    private static final Map<String, Vocabulary> CACHE = new ConcurrentHashMap<>();

    private final String source;
    private final Map<String, Integer> ids;
    private final List<String> specials;
    private final String sha256;

    private Vocabulary(String source, Map<String, Integer> ids, String sha256) {
        this.source = source;
        this.ids = ids;
        this.sha256 = sha256;
        this.specials = SPECIAL.stream().filter(ids::containsKey).toList();
    }

    /** The BERT-uncased vocabulary shipped in this jar. */
    public static Vocabulary shipped() {
        return CACHE.computeIfAbsent("<shipped>", k -> {
            try (InputStream in = Vocabulary.class.getResourceAsStream(SHIPPED)) {
                if (in == null) {
                    throw new IllegalStateException("the shipped vocabulary " + SHIPPED + " is missing from the lsr-os core jar");
                }
                return parse("the shipped " + SHIPPED, in.readAllBytes());
            } catch (IOException e) {
                throw new UncheckedIOException("cannot read the shipped vocabulary: " + e, e);
            }
        });
    }

    /** The vocabulary in {@code file}, from the cache when the file has not changed since it was read. */
    public static Vocabulary load(Path file) {
        try {
            String key = file.toAbsolutePath() + "|" + Files.size(file) + "|" + Files.getLastModifiedTime(file).toMillis();
            return CACHE.computeIfAbsent(key, k -> read(file));
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the vocabulary [" + file + "]: " + e, e);
        }
    }

    /**
     * The vocabulary of a {@code lsr_os_wordpiece} tokenizer named {@code tokenizer}, from its settings:
     * {@code vocabPath} (a file inside the node's {@code configDir}; null: the shipped one) and
     * {@code expectedSha256} (null, or what the file's SHA-256 must be, so an index never silently
     * meets another vocabulary). Throws IllegalArgumentException naming the tokenizer.
     */
    public static Vocabulary forTokenizer(String tokenizer, Path configDir, String vocabPath, String expectedSha256) {
        Path file = vocabPath == null ? null : fileInConfig(tokenizer, configDir, vocabPath);
        Vocabulary vocabulary;
        try {
            vocabulary = file == null ? shipped() : load(file);
        } catch (RuntimeException e) {
            throw new IllegalArgumentException("tokenizer [" + tokenizer + "]: " + e.getMessage(), e);
        }
        if (expectedSha256 != null && expectedSha256.equalsIgnoreCase(vocabulary.sha256()) == false) {
            throw new IllegalArgumentException("tokenizer [" + tokenizer + "]: " + WordPieceTokenizer.VOCAB_SHA256 + " ["
                + expectedSha256 + "] does not match the vocabulary [" + vocabulary.source + "], whose SHA-256 is ["
                + vocabulary.sha256() + "]; the index was made for another vocabulary");
        }
        return vocabulary;
    }

    private static Path fileInConfig(String tokenizer, Path configDir, String vocabPath) {
        Path config = configDir.toAbsolutePath().normalize();
        Path file = config.resolve(vocabPath).normalize();
        if (file.startsWith(config) == false || Files.isRegularFile(file) == false) {
            throw new IllegalArgumentException("tokenizer [" + tokenizer + "]: " + WordPieceTokenizer.VOCAB_PATH + " ["
                + vocabPath + "] must name a file inside the config folder [" + config + "]");
        }
        return file;
    }

    /** A vocabulary from terms in id order (tests). */
    static Vocabulary of(List<String> terms) {
        return parse("<memory>", String.join("\n", terms).getBytes(StandardCharsets.UTF_8));
    }

    private static Vocabulary read(Path file) {
        try {
            return parse(file.toString(), Files.readAllBytes(file));
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the vocabulary [" + file + "]: " + e, e);
        }
    }

    private static Vocabulary parse(String source, byte[] bytes) {
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

    /** The number of distinct terms. */
    public int size() {
        return ids.size();
    }

    /** The special tokens of this vocabulary that a text may contain verbatim. */
    List<String> specials() {
        return specials;
    }

    /** SHA-256 of the file's bytes, lowercase hex: what an index's {@code vocab_sha256} setting records. */
    public String sha256() {
        return sha256;
    }
}
