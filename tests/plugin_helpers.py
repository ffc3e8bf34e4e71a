"""Helpers of the plugin tests: the reference tokenizer, texts to compare on, and `_analyze` in
batches whose tokens are split back per text, on either engine."""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

import orjson
import pytest

from lsr_os.engines.base.base import Engine

ROOT = Path(__file__).resolve().parents[1]
SEP = " [SEP] "  # a special token: matched on the raw text, it cuts the batch back into its texts


@functools.lru_cache(maxsize=1)
def reference():
    """tokenizers' fast BERT-uncased tokenizer (the one AutoTokenizer loads), without padding or truncation."""
    from tokenizers import Tokenizer

    from lsr_os.vocab import default_vocab_dir

    tok = Tokenizer.from_file(str(Path(default_vocab_dir()) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def char_table():
    """plugin/tools/bert_char_table.py as a module (it reads the character classes off tokenizers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bert_char_table", ROOT / "plugin" / "tools" / "bert_char_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utf16_offsets(text: str) -> list[int]:
    """Code point index -> UTF-16 index of `text` (both engines count offsets in UTF-16 units)."""
    out = [0]
    for ch in text:
        out.append(out[-1] + (2 if ord(ch) > 0xFFFF else 1))
    return out


def expected(texts: list[str]) -> list[list[tuple[str, int, int]]]:
    """(token, start, end) per text from the reference, offsets in UTF-16 units."""
    out = []
    for text, enc in zip(texts, reference().encode_batch(texts, add_special_tokens=False)):
        units = utf16_offsets(text)
        out.append([(t, units[a], units[b]) for t, (a, b) in zip(enc.tokens, enc.offsets)])
    return out


def analyzed(engine: Engine, texts: list[str], index: str | None = None, analyzer: str | None = None,
             max_tokens: int = 9000) -> list[list[tuple[str, int, int]]]:
    """(token, start, end) per text from the engine, many texts per `_analyze` request: joined by
    SEP, so the batch's [SEP] tokens mark where each text ends (no text may contain "[SEP]")."""
    out: list[list[tuple[str, int, int]]] = []
    batch: list[str] = []
    budget = 0
    for text in texts + [None]:
        cost = 4 + len(text) * 3 if text is not None else 0  # a generous bound on the tokens a text makes
        if batch and (text is None or budget + cost > max_tokens):
            out += _analyze_batch(engine, batch, index, analyzer)
            batch, budget = [], 0
        if text is not None:
            assert "[SEP]" not in text
            batch.append(text)
            budget += cost
    return out


def _analyze_batch(engine: Engine, texts, index, analyzer):
    joined = SEP.join(texts)
    body = {"text": joined, **({"analyzer": analyzer} if analyzer else {"tokenizer": "lsr_os_wordpiece"})}
    tokens = engine.analyze(index, body)["tokens"]
    per_text: list[list[tuple[str, int, int]]] = [[]]
    starts = [0]
    for text in texts[:-1]:
        starts.append(starts[-1] + len(text.encode("utf-16-le")) // 2 + len(SEP))
    for tok in tokens:
        if tok["token"] == "[SEP]" and tok["start_offset"] == starts[len(per_text)] - len(SEP) + 1:
            per_text.append([])
            continue
        base = starts[len(per_text) - 1]
        per_text[-1].append((tok["token"], tok["start_offset"] - base, tok["end_offset"] - base))
    assert len(per_text) == len(texts), "the batch did not split back into its texts"
    return per_text


def require_plugin(engine: Engine) -> None:
    """Skip when the engine's test node lacks the plugin; a failure under CI=true, where both
    engines' test nodes run it (.ci/run starts them with --plugin)."""
    if not engine.features.has_lsr_os_plugin:
        message = (f"the {engine.display_name} node at {engine.where} does not run the lsr-os plugin on every "
                   f"node (lsr-os node start --engine {engine.name} installs it when Maven and a JDK 21+ are there)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def bulk_lines(engine: Engine, index: str, docs: dict[str, dict]) -> None:
    """Index {id: document} in one bulk request and refresh; every document must be taken."""
    payload = b"".join(orjson.dumps({"index": {"_index": index, "_id": doc_id}}) + b"\n" + orjson.dumps(doc) + b"\n"
                       for doc_id, doc in docs.items())
    answer = engine.bulk(payload)
    assert not answer["errors"], [i for i in answer["items"] if "error" in i["index"]][:3]
    engine.refresh(index)


# ----------------------------------------------------------------------------- OpenSearch Dashboards


def saved_search(prefix: str = "lsr") -> dict:
    """The images search that `lsr-os dashboards` writes."""
    from lsr_os.index import dashboards_objects

    objects = [json.loads(line) for line in dashboards_objects(prefix).splitlines()]
    return next(o for o in objects if o["type"] == "search" and o["id"] == f"{prefix}-images-top-terms")


def discover_body(free_text: str, search: dict) -> dict:
    """The body Discover sends for free text typed over a saved search on an index pattern without
    a time field (OpenSearch-Dashboards, default advanced settings): search_source.ts flatten()
    (stored_fields, script_fields, docvalue_fields, _source, highlight), build_opensearch_query.ts;
    for Lucene from_lucene.ts + decorate_query.ts (query_string with query:queryString:options and
    the browser's time zone), for DQL from_kuery.ts + kuery/functions/and.ts + is.ts (multi_match,
    in filter context); discover's get_sort_for_search_source.ts, get_default_sort.ts and
    normalize_sort_request.ts for the sort."""
    language = json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["language"]
    if language == "lucene":
        query = {"bool": {"must": [{"query_string": {"query": free_text, "analyze_wildcard": True, "time_zone": "UTC"}}],
                          "filter": [], "should": [], "must_not": []}}
    else:  # DQL ("kuery"): every clause lands in filter context
        query = {"bool": {"must": [], "filter": [{"multi_match": {"type": "best_fields", "query": free_text,
                                                                    "lenient": True}}],
                          "should": [], "must_not": []}}
    sort = [{field: {"order": order}} for field, order in search["attributes"]["sort"] or [["_score", "desc"]]]
    return {"sort": sort, "size": 500, "version": True, "stored_fields": ["*"],
            "script_fields": {}, "docvalue_fields": [], "_source": {"excludes": []}, "query": query,
            "highlight": {"pre_tags": ["@opensearch-dashboards-highlighted-field@"],
                          "post_tags": ["@/opensearch-dashboards-highlighted-field@"],
                          "fields": {"*": {}}, "fragment_size": 2147483647}}


def discover(opensearch: Engine, index: str, body: dict) -> list[dict]:
    """Sent as Dashboards' server sends it: its default search parameters in the URL."""
    url = f"/{index}/_search?ignore_unavailable=true&track_total_hits=true&preference=1764650000000&timeout=30000ms"
    answer = opensearch.client.transport.perform_request("POST", url, body=body)
    return answer["hits"]["hits"]


# ----------------------------------------------------------------------------- texts

ACCENTED = "àáâãäåāăąçćĉċčďđèéêëēĕėęěĝğġģĥħìíîïĩīĭįıĵķĺļľŀłñńņňŉòóôõöøōŏőœŕŗřśŝşšţťŧùúûüũūŭůűųŵýÿŷźżžßþðæ"
COMBINING = "".join(chr(c) for c in range(0x0300, 0x0370)) + "\u0483\u0591\u05b0\u064b\u0670\u0e31\u1ab0\u20d0\ufe20"
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴急拉更"
KANA_HANGUL = "ひらがなカタカナﾊﾟｶﾞ한국어조선말안녕하세요"
EMOJI = "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗☺️😚😙🥲😋😛😜🤪😝🤑🤗🤭🫢🫣🤫🤔🫡🤐🤨😐😑😶🫥😶‍🌫️😏😒🙄😬😮‍💨🤥🫨👍🏽👩‍👩‍👧‍👦🏳️‍🌈🇩🇪🇯🇵🏴󠁧󠁢󠁳󠁣󠁴󠁿❤️‍🔥🫠🪿"
SUPPLEMENTARY = "𝐀𝐁𝐂𝒜𝓑𝔄𝕬𝖆𝟘𝟙𐍈𐌰𐌱𓀀𓁐𠀀𠀁𪚥𫝀𬺰𝄞𝄢𐀀𐐀𐐨🜁🝖"
SCRIPTS = ("Привет мир Ελληνικά ΟΔΟΣ עברית العربية हिन्दी বাংলা தமிழ் ไทย ქართული Հայերեն ትግርኛ "
           "Tiếng Việt İstanbul ǅǈǋ ﬁﬂ ẞß ǰ ŉ ΐ ἀἁἂ ḁḃ Å Ω K Ⅻ ① ⑴ ㎏ ™ ½ ² ℃")
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»‘’“”„‚‹›–—―…·•′″‰€£¥¢§¶†‡※‽⁂、。「」『』【】〈〉《》〔〕！？，．：；（）［］｛｝"
CONTROL = "".join(chr(c) for c in [0, 1, 7, 8, 11, 12, 27, 127, 0x85, 0x9F, 0xAD, 0x200B, 0x200C, 0x200D, 0x200E,
                                   0x2028, 0x2029, 0x2060, 0xFEFF, 0xFFFD, 0xE000, 0xF8FF, 0x180E, 0x061C])
SPACES = " \t\n\r\u00a0\u1680\u2000\u2003\u2007\u200a\u202f\u205f\u3000"
POOLS = [ACCENTED, COMBINING, CJK, KANA_HANGUL, EMOJI, SUPPLEMENTARY, SCRIPTS, PUNCT, CONTROL, SPACES,
         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]


def random_texts(n: int, seed: int) -> list[str]:
    """Mixed-script texts: words of letters from every pool, runs of punctuation and spaces,
    controls inside words, very long words, empty and whitespace-only texts."""
    rng = random.Random(seed)
    out = ["", " ", "\t\n ", "\u3000\u00a0", "\u200b", "\x00", "[CLS]", "a[MASK]b", "[PAD][UNK]", "[cls] [Sep]"]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.05:  # a very long word, around the 100-character limit
            out.append(rng.choice(["a", "é", "ab", "한", "x\u0301", "😀"]) * rng.randint(90, 130))
            continue
        words = []
        for _ in range(rng.randint(1, 8)):
            pools = rng.sample(POOLS, rng.randint(1, 3))
            chars = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12)))
            words.append(chars)
        out.append(rng.choice([" ", "", "  ", "\t", "-", "..."]).join(words))
    return out


def world_captions(n: int, seed: int) -> list[str]:
    """Captions of the demo world and of the synthetic world (built from their word lists)."""
    from lsr_os.demo import synthetic, world

    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n // 2:
        out += world.captions(world.random_scene(rng), rng)
    names = sorted(synthetic.CONCEPTS)
    while len(out) < n:
        words = [c if rng.random() < 0.5 else rng.choice(synthetic.CONCEPTS[c]) for c in rng.sample(names, 3)]
        phrases = [f"{rng.choice(['a', 'the'])} {w}" for w in words]
        out.append(rng.choice(synthetic.TEMPLATES).format(x=", ".join(phrases[:-1]) + " and " + phrases[-1]))
    return out[:n]


# ----------------------------------------------------------------------------- heads and rankings


def head_with_query_weights(folder: Path, seed: int = 0, weights=None) -> Path:
    """A tiny head saved with query weights: random over the content terms (0 on stop words,
    punctuation and special tokens, as training leaves them), or `weights` as given."""
    import torch

    from lsr_os import static_query
    from lsr_os.models.head import SparseHead
    from lsr_os.vocab import fast_tokenizer

    torch.manual_seed(seed)
    head = SparseHead(dense_size=8, hidden_size=16)
    if weights is None:
        tok = fast_tokenizer()
        mask = static_query.content_term_mask([tok.id_to_token(i) for i in range(len(tok))], tok.all_special_tokens)
        weights = torch.rand(head.vocab_size) * 2.5 * torch.tensor(mask)
    head.query_weights = weights
    head.query_weights_info = {"method": "test"}
    head.save_pretrained(folder)
    return folder


def assert_same_top(got: list[tuple[str, float]], want: list[tuple[str, float]], k: int, tol: float) -> None:
    """`got` (best first) holds the top k of `want` (best first, longer than k unless it is all),
    documents tied with the k-th within `tol` counted as equal: each of `got` scores what `want`
    gives it within `tol`, in order, and every document of `want` clearly above the k-th is there."""
    scores = dict(want)
    top = want[:k]
    assert len(got) == len(top), (got, top)
    kth = top[-1][1]
    for doc, score in got:
        assert doc in scores and abs(score - scores[doc]) <= tol, (doc, score, scores.get(doc))
        assert scores[doc] >= kth - 2 * tol, (doc, scores[doc], kth)
    assert all(a[1] >= b[1] - tol for a, b in zip(got, got[1:])), got
    assert {d for d, s in top if s > kth + 2 * tol} <= {d for d, _ in got}
