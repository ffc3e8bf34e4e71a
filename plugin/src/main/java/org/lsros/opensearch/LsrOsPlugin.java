/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.util.Map;

import org.opensearch.index.IndexModule;
import org.opensearch.index.analysis.TokenizerFactory;
import org.opensearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.opensearch.plugins.AnalysisPlugin;
import org.opensearch.plugins.Plugin;

/**
 * lsr-os in the cluster: typed text becomes the query side of a learned sparse model.
 *
 * <p>{@code lsr_os_wordpiece} splits text into BERT-uncased word pieces (a search analyzer), and
 * {@code lsr_os_dot} scores a field whose term frequencies hold a document's folded weights, so
 * a plain {@code match} on that field ranks documents by the dot product.
 */
public class LsrOsPlugin extends Plugin implements AnalysisPlugin {

    /** The plugin's name, and the folder it is installed in. */
    public static final String NAME = "lsr-os";

    @Override
    public Map<String, AnalysisProvider<TokenizerFactory>> getTokenizers() {
        return Map.of(WordPieceTokenizerFactory.NAME, WordPieceTokenizerFactory::new);
    }

    @Override
    public void onIndexModule(IndexModule indexModule) {
        indexModule.addSimilarity(DotSimilarity.NAME, (settings, version, scriptService) -> DotSimilarity.fromSettings(settings));
    }
}
