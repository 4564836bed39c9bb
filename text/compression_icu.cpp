// The Engram compression table (MODEL.md §4.1), built with ICU.
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <unordered_map>

#include "runtime/error.h"
#include "text/compression.h"
#include "text/tokenizer.h"

namespace engram {

namespace {

const icu::Normalizer2& normalizer(const icu::Normalizer2* (*get)(UErrorCode&), const char* name) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = get(status);
  EG_CHECK(U_SUCCESS(status) && n != nullptr, "ICU: cannot load the ", name, " normalizer (",
           u_errorName(status), ")");
  return *n;
}

icu::UnicodeString normalize(const icu::Normalizer2& n, const icu::UnicodeString& s, const char* name) {
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeString out = n.normalize(s, status);
  EG_CHECK(U_SUCCESS(status), "ICU: ", name, " normalization failed (", u_errorName(status), ")");
  return out;
}

bool only_whitespace(const icu::UnicodeString& s) {
  if (s.isEmpty()) return false;
  for (int32_t i = 0; i < s.length(); i = s.moveIndex32(i, 1)) {
    if (!u_isUWhiteSpace(s.char32At(i))) return false;
  }
  return true;
}

}  // namespace

std::string compression_key(const std::string& decoded) {
  static const icu::Normalizer2& nfkc = normalizer(&icu::Normalizer2::getNFKCInstance, "NFKC");
  static const icu::Normalizer2& nfd = normalizer(&icu::Normalizer2::getNFDInstance, "NFD");

  const icu::UnicodeString original = icu::UnicodeString::fromUTF8(decoded);
  if (only_whitespace(original)) return " ";
  const icu::UnicodeString decomposed = normalize(nfd, normalize(nfkc, original, "NFKC"), "NFD");

  icu::UnicodeString unmarked;
  for (int32_t i = 0; i < decomposed.length(); i = decomposed.moveIndex32(i, 1)) {
    const UChar32 c = decomposed.char32At(i);
    if (u_charType(c) != U_NON_SPACING_MARK) unmarked.append(c);
  }
  unmarked.toLower(icu::Locale::getRoot());

  // Collapse whitespace runs to one space and trim: a space is emitted only between two
  // non-whitespace characters.
  icu::UnicodeString key;
  bool space_pending = false;
  for (int32_t i = 0; i < unmarked.length(); i = unmarked.moveIndex32(i, 1)) {
    const UChar32 c = unmarked.char32At(i);
    if (u_isUWhiteSpace(c)) {
      space_pending = !key.isEmpty();
      continue;
    }
    if (space_pending) key.append(static_cast<UChar>(' '));
    space_pending = false;
    key.append(c);
  }
  if (key.isEmpty()) return decoded;
  std::string out;
  key.toUTF8String(out);
  return out;
}

std::vector<int32_t> build_compression_table(const std::vector<std::string>& decoded_pieces) {
  std::unordered_map<std::string, int32_t> canonical;
  std::vector<int32_t> table;
  table.reserve(decoded_pieces.size());
  for (const std::string& piece : decoded_pieces) {
    const auto [it, inserted] =
        canonical.try_emplace(compression_key(piece), static_cast<int32_t>(canonical.size()));
    table.push_back(it->second);
  }
  return table;
}

std::vector<int32_t> build_compression_table(const Tokenizer& tokenizer) {
  static const std::string kWordBoundary = "\xE2\x96\x81";  // U+2581 "▁", SentencePiece's space
  std::vector<std::string> decoded;
  decoded.reserve(tokenizer.vocab_size());
  for (int id = 0; id < tokenizer.vocab_size(); ++id) {
    std::string piece = tokenizer.piece(id);
    // Byte pieces ("<0x0A>") keep their piece string; so do control pieces ("<unk>", "<s>", "</s>"),
    // which contain no "▁".
    if (!tokenizer.is_byte(id)) {
      for (size_t at = piece.find(kWordBoundary); at != std::string::npos;
           at = piece.find(kWordBoundary, at + 1)) {
        piece.replace(at, kWordBoundary.size(), " ");
      }
    }
    decoded.push_back(std::move(piece));
  }
  return build_compression_table(decoded);
}

}  // namespace engram
