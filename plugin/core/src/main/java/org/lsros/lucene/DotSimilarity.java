/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.util.Set;
import java.util.TreeSet;
import java.util.function.Function;

import org.apache.lucene.search.CollectionStatistics;
import org.apache.lucene.search.Explanation;
import org.apache.lucene.search.TermStatistics;
import org.apache.lucene.search.similarities.Similarity;

/**
 * The {@code lsr_os_dot} similarity: score = boost x freq / scale.
 *
 * <p>A document's term frequencies carry its folded weights (integers, the term's weight times
 * {@code scale}), so a match over the field sums those weights back: a dot product. No collection
 * statistics, no norms. The frequency is capped at {@link Integer#MAX_VALUE} (the most a field can
 * hold), so the maximum score Lucene's block-max WAND/MaxScore asks for, {@code score(Float.MAX_VALUE, 1)},
 * stays finite and skipping keeps working.
 */
public final class DotSimilarity extends Similarity {

    /** The similarity type both engines register. */
    public static final String NAME = "lsr_os_dot";
    public static final float DEFAULT_SCALE = 65536f;
    private static final float MAX_FREQ = Integer.MAX_VALUE;
    private static final Set<String> SETTINGS = Set.of("type", "scale");

    private final float scale;

    public DotSimilarity(float scale) {
        if (Float.isFinite(scale) == false || scale <= 0) {
            throw new IllegalArgumentException("similarity [" + NAME + "]: scale must be a finite number > 0, got [" + scale + "]");
        }
        this.scale = scale;
    }

    /**
     * From a similarity's index settings ({@code index.similarity.<name>.*}): their keys, and the
     * value of a key (an engine's {@code Settings::get}). Throws IllegalArgumentException.
     */
    public static DotSimilarity fromSettings(Set<String> keys, Function<String, String> value) {
        Set<String> unknown = new TreeSet<>(keys);
        unknown.removeAll(SETTINGS);
        if (unknown.isEmpty() == false) {
            throw new IllegalArgumentException("similarity [" + NAME + "]: unknown settings " + unknown + " (it takes only [scale])");
        }
        String scale = value.apply("scale");
        try {
            return new DotSimilarity(scale == null ? DEFAULT_SCALE : Float.parseFloat(scale.strip()));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("similarity [" + NAME + "]: scale must be a finite number > 0, got [" + scale + "]", e);
        }
    }

    float scale() {
        return scale;
    }

    @Override
    public SimScorer scorer(float boost, CollectionStatistics collectionStats, TermStatistics... termStats) {
        return new DotScorer(boost, scale);
    }

    @Override
    public String toString() {
        return NAME + "(scale=" + scale + ")";
    }

    private static final class DotScorer extends SimScorer {
        private final float boost;
        private final float scale;
        private final float weight;

        DotScorer(float boost, float scale) {
            this.boost = boost;
            this.scale = scale;
            this.weight = boost / scale;
        }

        @Override
        public float score(float freq, long norm) {
            return weight * Math.min(freq, MAX_FREQ);
        }

        @Override
        public Explanation explain(Explanation freq, long norm) {
            float f = freq.getValue().floatValue();
            return Explanation.match(score(f, norm), "score(freq=" + f + "), boost * freq / scale, from:",
                Explanation.match(boost, "boost"), freq, Explanation.match(scale, "scale"));
        }
    }
}
