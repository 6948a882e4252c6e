# Writes OUT: a C++ file defining zr::builtin_corpus() that returns the bytes of IN.
file(READ ${IN} content HEX)
string(LENGTH "${content}" hexlen)
math(EXPR n "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," body "${content}")
file(WRITE ${OUT} "#include <string_view>\nnamespace zr {\nnamespace { const char kCorpus[] = {${body} 0}; }\nstd::string_view builtin_corpus() { return std::string_view(kCorpus, ${n}); }\n}  // namespace zr\n")
