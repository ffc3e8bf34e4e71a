/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.nio.file.Files;
import java.nio.file.Path;

import org.apache.lucene.analysis.Tokenizer;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.IndexSettings;
import org.opensearch.index.analysis.AbstractTokenizerFactory;

/**
 * The {@code lsr_os_wordpiece} tokenizer.
 *
 * <p>Settings: {@code vocab_path} (a vocab.txt relative to the node's config folder; default: the
 * BERT-uncased vocabulary shipped in the plugin's folder) and {@code vocab_sha256} (when given, it
 * must equal the loaded file's SHA-256, so an index never silently meets another vocabulary).
 */
public class WordPieceTokenizerFactory extends AbstractTokenizerFactory {

    public static final String NAME = "lsr_os_wordpiece";
    /** The vocabulary file shipped at the root of the plugin's zip. */
    static final String DEFAULT_VOCAB = "vocab.txt";

    private final Vocabulary vocabulary;

    public WordPieceTokenizerFactory(IndexSettings indexSettings, Environment environment, String name, Settings settings) {
        super(indexSettings, settings, name);
        Path file = vocabularyFile(environment, name, settings.get("vocab_path"));
        try {
            vocabulary = Vocabulary.load(file);
        } catch (RuntimeException e) {
            throw new IllegalArgumentException("tokenizer [" + name + "]: " + e.getMessage(), e);
        }
        String expected = settings.get("vocab_sha256");
        if (expected != null && expected.equalsIgnoreCase(vocabulary.sha256()) == false) {
            throw new IllegalArgumentException("tokenizer [" + name + "]: vocab_sha256 [" + expected
                + "] does not match the vocabulary [" + file + "], whose SHA-256 is [" + vocabulary.sha256()
                + "]; the index was made for another vocabulary");
        }
    }

    private static Path vocabularyFile(Environment environment, String name, String vocabPath) {
        if (vocabPath == null) {
            return environment.pluginsDir().resolve(LsrOsPlugin.NAME).resolve(DEFAULT_VOCAB);
        }
        Path config = environment.configDir().toAbsolutePath().normalize();
        Path file = config.resolve(vocabPath).normalize();
        if (file.startsWith(config) == false || Files.isRegularFile(file) == false) {
            throw new IllegalArgumentException("tokenizer [" + name + "]: vocab_path [" + vocabPath
                + "] must name a file inside the config folder [" + config + "]");
        }
        return file;
    }

    @Override
    public Tokenizer create() {
        return new WordPieceTokenizer(vocabulary);
    }
}
