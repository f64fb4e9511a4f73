#include "operator/yaml_lite.h"

#include <cstdlib>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "operator/status_macros.h"

namespace baton::op {
namespace {

struct Line {
  int indent = 0;
  std::string text;  // Without indentation and comment.
  size_t raw = 0;    // Index into the raw lines.
};

// Cuts a comment: '#' at the start or after whitespace, outside quotes.
std::string StripComment(const std::string& s) {
  char quote = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quote != 0) {
      if (c == '\\' && quote == '"') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '"' || c == '\'') {
      // A quote starts a quoted scalar only at a token start.
      if (i == 0 || s[i - 1] == ' ' || s[i - 1] == '[' || s[i - 1] == '{' || s[i - 1] == ',' ||
          s[i - 1] == ':' || s[i - 1] == '-') {
        quote = c;
      }
    } else if (c == '#' && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t')) {
      return std::string(absl::StripTrailingAsciiWhitespace(s.substr(0, i)));
    }
  }
  return std::string(absl::StripTrailingAsciiWhitespace(s));
}

class Parser {
 public:
  Parser(const std::string& text, std::string source) : source_(std::move(source)) {
    raw_ = absl::StrSplit(text, '\n');
    for (std::string& r : raw_) {
      if (!r.empty() && r.back() == '\r') r.pop_back();
    }
    bool started = false;
    for (size_t i = 0; i < raw_.size(); ++i) {
      const std::string& r = raw_[i];
      if (r.rfind("---", 0) == 0 && (r.size() == 3 || r[3] == ' ')) {
        if (started) break;  // The first document only.
        started = true;
        continue;
      }
      if (r.rfind("...", 0) == 0) break;
      size_t indent = 0;
      while (indent < r.size() && r[indent] == ' ') ++indent;
      if (indent < r.size() && r[indent] == '\t') {
        tab_line_ = static_cast<int>(i) + 1;
        break;
      }
      std::string body = StripComment(r.substr(indent));
      if (body.empty()) continue;
      if (body[0] == '%') continue;  // Directives.
      started = true;
      lines_.push_back({static_cast<int>(indent), body, i});
    }
  }

  absl::StatusOr<Json> Parse() {
    if (tab_line_ > 0) return Error(tab_line_, "tabs are not allowed in indentation");
    if (lines_.empty()) return Json(nullptr);
    BATON_ASSIGN_OR_RETURN(Json root, Node(lines_[0].indent));
    if (pos_ < lines_.size()) {
      return Error(static_cast<int>(lines_[pos_].raw) + 1, "unexpected content");
    }
    return root;
  }

 private:
  absl::Status Error(int line, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ":", line, ": ", what));
  }
  int LineNo() const {
    return pos_ < lines_.size() ? static_cast<int>(lines_[pos_].raw) + 1
                                : static_cast<int>(raw_.size());
  }

  static bool IsSequenceItem(const std::string& t) { return t == "-" || t.rfind("- ", 0) == 0; }

  // Finds the ": " (or trailing ":") that ends a mapping key, outside
  // quotes and flow brackets; npos when the line is no key.
  static size_t KeyColon(const std::string& t) {
    char quote = 0;
    int depth = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      const char c = t[i];
      if (quote != 0) {
        if (c == '\\' && quote == '"') {
          ++i;
        } else if (c == quote) {
          quote = 0;
        }
        continue;
      }
      if ((c == '"' || c == '\'') && i == 0) {
        quote = c;
      } else if (c == '[' || c == '{') {
        if (i == 0) return std::string::npos;  // A flow collection, not a key.
        ++depth;
      } else if (c == ']' || c == '}') {
        --depth;
      } else if (c == ':' && depth == 0 && (i + 1 == t.size() || t[i + 1] == ' ')) {
        return i;
      }
    }
    return std::string::npos;
  }

  absl::StatusOr<Json> Node(int indent) {
    const Line& line = lines_[pos_];
    if (IsSequenceItem(line.text)) return Sequence(line.indent);
    if (KeyColon(line.text) != std::string::npos) return Mapping(line.indent);
    // A lone scalar.
    if (line.indent < indent) return Json(nullptr);
    ++pos_;
    if (pos_ < lines_.size() && lines_[pos_].indent > line.indent) {
      return Error(LineNo(), "multi-line plain scalars are not supported");
    }
    return Scalar(line.text, static_cast<int>(line.raw) + 1);
  }

  absl::StatusOr<Json> Sequence(int indent) {
    Json seq = Json::array();
    while (pos_ < lines_.size() && lines_[pos_].indent == indent &&
           IsSequenceItem(lines_[pos_].text)) {
      Line& line = lines_[pos_];
      size_t off = 1;
      while (off < line.text.size() && line.text[off] == ' ') ++off;
      if (off >= line.text.size()) {
        ++pos_;
        if (pos_ < lines_.size() && lines_[pos_].indent > indent) {
          BATON_ASSIGN_OR_RETURN(Json item, Node(lines_[pos_].indent));
          seq.push_back(std::move(item));
        } else {
          seq.push_back(nullptr);
        }
        continue;
      }
      // "- rest": parse rest as a node starting at its own column, so that
      // a mapping continues on the following lines at that column.
      line.indent += static_cast<int>(off);
      line.text = line.text.substr(off);
      BATON_ASSIGN_OR_RETURN(Json item, Node(line.indent));
      seq.push_back(std::move(item));
    }
    return seq;
  }

  absl::StatusOr<Json> Mapping(int indent) {
    Json map = Json::object();
    while (pos_ < lines_.size() && lines_[pos_].indent == indent) {
      const Line line = lines_[pos_];
      const int line_no = static_cast<int>(line.raw) + 1;
      const size_t colon = KeyColon(line.text);
      if (colon == std::string::npos) {
        if (IsSequenceItem(line.text)) break;
        return Error(line_no, "expected \"key: value\"");
      }
      BATON_ASSIGN_OR_RETURN(Json key, Scalar(line.text.substr(0, colon), line_no));
      const std::string name = key.is_string() ? key.get<std::string>() : key.dump();
      std::string value(absl::StripLeadingAsciiWhitespace(line.text.substr(colon + 1)));
      ++pos_;
      if (value.empty()) {
        if (pos_ < lines_.size() && lines_[pos_].indent > indent) {
          BATON_ASSIGN_OR_RETURN(map[name], Node(lines_[pos_].indent));
        } else if (pos_ < lines_.size() && lines_[pos_].indent == indent &&
                   IsSequenceItem(lines_[pos_].text)) {
          // A sequence may sit at its key's indentation.
          BATON_ASSIGN_OR_RETURN(map[name], Sequence(indent));
        } else {
          map[name] = nullptr;
        }
      } else if (value[0] == '|' || value[0] == '>') {
        BATON_ASSIGN_OR_RETURN(map[name], BlockScalar(value, line, indent));
      } else {
        BATON_ASSIGN_OR_RETURN(map[name], Scalar(value, line_no));
      }
    }
    return map;
  }

  absl::StatusOr<Json> BlockScalar(const std::string& header, const Line& line, int indent) {
    const bool folded = header[0] == '>';
    char chomp = 0;
    for (char c : header.substr(1)) {
      if (c == '-' || c == '+') {
        chomp = c;
      } else if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        return Error(static_cast<int>(line.raw) + 1, "bad block scalar header");
      }
    }
    // Raw lines up to the first non-blank one indented <= `indent`.
    std::vector<std::string> body;
    size_t r = line.raw + 1;
    int block_indent = -1;
    for (; r < raw_.size(); ++r) {
      const std::string& s = raw_[r];
      const size_t first = s.find_first_not_of(' ');
      if (first == std::string::npos) {
        body.emplace_back();
        continue;
      }
      if (static_cast<int>(first) <= indent) break;
      if (block_indent < 0) block_indent = static_cast<int>(first);
      if (static_cast<int>(first) < block_indent) break;
      body.push_back(s.substr(static_cast<size_t>(block_indent)));
    }
    while (pos_ < lines_.size() && lines_[pos_].raw < r) ++pos_;
    size_t trailing = 0;
    while (!body.empty() && body.back().empty()) {
      body.pop_back();
      ++trailing;
    }
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (i == 0) {
        out += body[i];
      } else if (!folded) {
        out += "\n" + body[i];
      } else if (body[i].empty()) {
        out += "\n";  // Each empty line of a folded scalar is one line break...
      } else if (body[i - 1].empty()) {
        out += body[i];  // ...and replaces the break before the next text.
      } else {
        // Folding joins text lines; more-indented lines keep their breaks.
        const bool join = body[i][0] != ' ' && body[i - 1][0] != ' ';
        out += (join ? " " : "\n") + body[i];
      }
    }
    if (chomp == '+') {
      out += std::string(trailing + (body.empty() ? 0 : 1), '\n');
    } else if (chomp == 0 && !body.empty()) {
      out += "\n";
    }
    return Json(out);
  }

  absl::StatusOr<Json> Scalar(const std::string& text, int line_no) {
    size_t i = 0;
    BATON_ASSIGN_OR_RETURN(Json v, Value(text, &i, /*flow=*/false, line_no));
    while (i < text.size() && text[i] == ' ') ++i;
    if (i != text.size())
      return Error(line_no, absl::StrCat("unexpected \"", text.substr(i), "\""));
    return v;
  }

  // Reads one value at text[*i]: a quoted scalar, a flow collection or a
  // plain scalar (which, inside a flow collection, ends at , ] } or ": ").
  absl::StatusOr<Json> Value(const std::string& text, size_t* i, bool flow, int line_no) {
    while (*i < text.size() && text[*i] == ' ') ++*i;
    if (*i >= text.size()) return Json(nullptr);
    const char c = text[*i];
    if (c == '&' || c == '*' || c == '!') {
      return Error(line_no, "anchors, aliases and tags are not supported");
    }
    if (c == '"') return DoubleQuoted(text, i, line_no);
    if (c == '\'') {
      std::string out;
      for (++*i; *i < text.size(); ++*i) {
        if (text[*i] == '\'') {
          if (*i + 1 < text.size() && text[*i + 1] == '\'') {
            out.push_back('\'');
            ++*i;
            continue;
          }
          ++*i;
          return Json(out);
        }
        out.push_back(text[*i]);
      }
      return Error(line_no, "unterminated single-quoted string");
    }
    if (c == '[') {
      Json seq = Json::array();
      ++*i;
      while (true) {
        while (*i < text.size() && text[*i] == ' ') ++*i;
        if (*i >= text.size()) return Error(line_no, "unterminated [ (multi-line flow?)");
        if (text[*i] == ']') {
          ++*i;
          return seq;
        }
        BATON_ASSIGN_OR_RETURN(Json item, Value(text, i, true, line_no));
        seq.push_back(std::move(item));
        while (*i < text.size() && text[*i] == ' ') ++*i;
        if (*i < text.size() && text[*i] == ',') ++*i;
      }
    }
    if (c == '{') {
      Json map = Json::object();
      ++*i;
      while (true) {
        while (*i < text.size() && text[*i] == ' ') ++*i;
        if (*i >= text.size()) return Error(line_no, "unterminated { (multi-line flow?)");
        if (text[*i] == '}') {
          ++*i;
          return map;
        }
        BATON_ASSIGN_OR_RETURN(Json key, Value(text, i, true, line_no));
        while (*i < text.size() && text[*i] == ' ') ++*i;
        Json value(nullptr);
        if (*i < text.size() && text[*i] == ':') {
          ++*i;
          BATON_ASSIGN_OR_RETURN(value, Value(text, i, true, line_no));
        }
        map[key.is_string() ? key.get<std::string>() : key.dump()] = std::move(value);
        while (*i < text.size() && text[*i] == ' ') ++*i;
        if (*i < text.size() && text[*i] == ',') ++*i;
      }
    }
    size_t end = *i;
    while (end < text.size()) {
      const char e = text[end];
      if (flow && (e == ',' || e == ']' || e == '}')) break;
      if (flow && e == ':' && (end + 1 == text.size() || text[end + 1] == ' ')) break;
      ++end;
    }
    std::string plain(absl::StripTrailingAsciiWhitespace(text.substr(*i, end - *i)));
    *i = end;
    return Plain(plain);
  }

  absl::StatusOr<Json> DoubleQuoted(const std::string& text, size_t* i, int line_no) {
    std::string out;
    for (++*i; *i < text.size(); ++*i) {
      const char c = text[*i];
      if (c == '"') {
        ++*i;
        return Json(out);
      }
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (++*i >= text.size()) break;
      switch (text[*i]) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case '0':
          out.push_back('\0');
          break;
        case '"':
          out.push_back('"');
          break;
        case '/':
          out.push_back('/');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case 'u': {
          if (*i + 4 >= text.size()) return Error(line_no, "bad \\u escape");
          const unsigned long cp = std::strtoul(text.substr(*i + 1, 4).c_str(), nullptr, 16);
          *i += 4;
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default:
          return Error(line_no, "unknown escape in double-quoted string");
      }
    }
    return Error(line_no, "unterminated double-quoted string");
  }

  static Json Plain(const std::string& s) {
    if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return Json(nullptr);
    if (s == "true" || s == "True" || s == "TRUE") return Json(true);
    if (s == "false" || s == "False" || s == "FALSE") return Json(false);
    int64_t n;
    if ((absl::ascii_isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+') &&
        absl::SimpleAtoi(s, &n)) {
      return Json(n);
    }
    double d;
    if ((absl::ascii_isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+' ||
         s[0] == '.') &&
        s.find_first_not_of("0123456789+-.eE") == std::string::npos && absl::SimpleAtod(s, &d)) {
      return Json(d);
    }
    return Json(s);
  }

  std::string source_;
  std::vector<std::string> raw_;
  std::vector<Line> lines_;
  size_t pos_ = 0;
  int tab_line_ = 0;
};

}  // namespace

absl::StatusOr<Json> ParseYaml(const std::string& text, const std::string& source) {
  Parser parser(text, source);
  return parser.Parse();
}

}  // namespace baton::op
