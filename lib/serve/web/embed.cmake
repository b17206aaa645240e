# Writes a C++ source that defines web_assets() (serve/web_assets.hpp) with the bytes of the
# files NAMES (comma-separated) of folder DIR, as byte arrays: a raw string could not hold
# every byte sequence. Run by web_assets.cmake as cmake -DDIR= -DNAMES= -DOUTPUT= -P embed.cmake.
string(REPLACE "," ";" names "${NAMES}")
set(arrays "")
set(entries "")
set(index 0)
foreach(name IN LISTS names)
  file(READ "${DIR}/${name}" hex HEX)
  string(LENGTH "${hex}" digits)
  math(EXPR size "${digits} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  # 16 bytes a line keeps the generated file readable in an error message (CMake's regular
  # expressions have no {n}).
  string(REPEAT "0x..," 16 line)
  string(REGEX REPLACE "(${line})" "\\1\n" bytes "${bytes}")
  # A trailing 0, so an empty file still makes a valid array; the size excludes it.
  string(APPEND arrays "// ${name}\nconst unsigned char kAsset${index}[] = {\n${bytes}0};\n")
  string(APPEND entries "      {\"${name}\", {reinterpret_cast<const char*>(kAsset${index}), ${size}}},\n")
  math(EXPR index "${index} + 1")
endforeach()
file(WRITE "${OUTPUT}.tmp" "// Generated from lib/serve/web by lib/serve/web/embed.cmake at build time; do not edit.
#include \"serve/web_assets.hpp\"

namespace mhla::serve {

namespace {

${arrays}
}  // namespace

std::span<const WebAsset> web_assets() {
  static const WebAsset assets[] = {
${entries}  };
  return assets;
}

}  // namespace mhla::serve
")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
