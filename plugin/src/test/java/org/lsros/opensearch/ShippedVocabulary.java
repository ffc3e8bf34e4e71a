/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** The vocabulary the plugin ships, copied from the test class path into a folder the tests may read. */
final class ShippedVocabulary {
    private ShippedVocabulary() {}

    static Path copyTo(Path file) {
        try (InputStream in = ShippedVocabulary.class.getResourceAsStream("/" + WordPieceTokenizerFactory.DEFAULT_VOCAB)) {
            Files.createDirectories(file.getParent());
            Files.copy(in, file);
            return file;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
