/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.io.IOException;
import java.util.Arrays;

import org.apache.lucene.analysis.CharArraySet;
import org.apache.lucene.analysis.FilteringTokenFilter;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;

/**
 * The {@code lsr_os_unique} token filter: keeps each term's first occurrence only, so a query
 * word typed twice counts once (a dropped token's position increment goes to the next one).
 *
 * <p>Engines have a {@code unique} filter of their own in their analysis-common module, which
 * an engine may lack (Elasticsearch's integration-test distribution); Lucene has none.
 */
public final class UniqueTermFilter extends FilteringTokenFilter {

    /** The token filter type both engines register. */
    public static final String NAME = "lsr_os_unique";

    private final CharTermAttribute termAtt = addAttribute(CharTermAttribute.class);
    private final CharArraySet seen = new CharArraySet(16, false);

    public UniqueTermFilter(TokenStream in) {
        super(in);
    }

    @Override
    protected boolean accept() {
        if (seen.contains(termAtt.buffer(), 0, termAtt.length())) {
            return false;
        }
        seen.add(Arrays.copyOf(termAtt.buffer(), termAtt.length())); // the set keeps the array it is given
        return true;
    }

    @Override
    public void reset() throws IOException {
        super.reset();
        seen.clear();
    }
}
