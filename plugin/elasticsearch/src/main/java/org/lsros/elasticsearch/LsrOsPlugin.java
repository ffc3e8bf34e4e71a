/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.elasticsearch;

import java.util.Map;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.TokenStream;
import org.elasticsearch.index.IndexModule;
import org.elasticsearch.index.analysis.AbstractIndexAnalyzerProvider;
import org.elasticsearch.index.analysis.AbstractTokenFilterFactory;
import org.elasticsearch.index.analysis.AnalyzerProvider;
import org.elasticsearch.index.analysis.TokenFilterFactory;
import org.elasticsearch.index.analysis.TokenizerFactory;
import org.elasticsearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.elasticsearch.plugins.AnalysisPlugin;
import org.elasticsearch.plugins.Plugin;
import org.lsros.lucene.DotSimilarity;
import org.lsros.lucene.FoldedAnalyzer;
import org.lsros.lucene.UniqueTermFilter;
import org.lsros.lucene.Vocabulary;
import org.lsros.lucene.WordPieceTokenizer;

/**
 * lsr-os in an Elasticsearch cluster: registers the core's Lucene pieces (org.lsros.lucene) under
 * the names the OpenSearch plugin registers too, so one set of index settings works on both.
 *
 * <p>{@code lsr_os_wordpiece} splits typed text into BERT-uncased word pieces (with
 * {@code lsr_os_unique}, the search analyzer), {@code lsr_os_folded} indexes a document's folded
 * weights as term frequencies, and {@code lsr_os_dot} scores them, so a plain {@code match} on
 * that field ranks documents by the dot product. The index must declare the similarity
 * ({@code index.similarity.lsr_os_dot.type: lsr_os_dot}); Elasticsearch checks its scores at
 * index creation.
 */
public class LsrOsPlugin extends Plugin implements AnalysisPlugin {

    @Override
    public Map<String, AnalysisProvider<TokenizerFactory>> getTokenizers() {
        return Map.of(WordPieceTokenizer.NAME, (indexSettings, environment, name, settings) -> {
            Vocabulary vocabulary = Vocabulary.forTokenizer(name, environment.configDir(),
                settings.get(WordPieceTokenizer.VOCAB_PATH), settings.get(WordPieceTokenizer.VOCAB_SHA256));
            return TokenizerFactory.newFactory(name, () -> new WordPieceTokenizer(vocabulary));
        });
    }

    @Override
    public Map<String, AnalysisProvider<TokenFilterFactory>> getTokenFilters() {
        return Map.of(UniqueTermFilter.NAME, (indexSettings, environment, name, settings) ->
            new AbstractTokenFilterFactory(name) {
                @Override
                public TokenStream create(TokenStream input) {
                    return new UniqueTermFilter(input);
                }
            });
    }

    @Override
    public Map<String, AnalysisProvider<AnalyzerProvider<? extends Analyzer>>> getAnalyzers() {
        return Map.of(FoldedAnalyzer.NAME, (indexSettings, environment, name, settings) -> {
            FoldedAnalyzer analyzer = FoldedAnalyzer.fromSetting(name, settings.get(FoldedAnalyzer.DELIMITER));
            return new AbstractIndexAnalyzerProvider<FoldedAnalyzer>(name) {
                @Override
                public FoldedAnalyzer get() {
                    return analyzer;
                }
            };
        });
    }

    @Override
    public void onIndexModule(IndexModule indexModule) {
        indexModule.addSimilarity(DotSimilarity.NAME,
            (settings, version, scriptService) -> DotSimilarity.fromSettings(settings.keySet(), settings::get));
    }
}
