# Included by lib/CMakeLists.txt: the chat page's files in this folder become a generated C++
# source of mhla_serve (serve/web_assets.hpp), rebuilt whenever one of them changes.
file(GLOB MHLA_WEB_ASSETS CONFIGURE_DEPENDS RELATIVE ${CMAKE_CURRENT_LIST_DIR}
  ${CMAKE_CURRENT_LIST_DIR}/*.html ${CMAKE_CURRENT_LIST_DIR}/*.css ${CMAKE_CURRENT_LIST_DIR}/*.js
  ${CMAKE_CURRENT_LIST_DIR}/*.svg)
list(TRANSFORM MHLA_WEB_ASSETS PREPEND ${CMAKE_CURRENT_LIST_DIR}/ OUTPUT_VARIABLE MHLA_WEB_ASSET_PATHS)
# Names joined by commas: a semicolon list would be split into several command arguments.
string(REPLACE ";" "," MHLA_WEB_ASSET_NAMES "${MHLA_WEB_ASSETS}")
set(MHLA_WEB_SOURCE ${CMAKE_CURRENT_BINARY_DIR}/web_assets_data.cpp)
add_custom_command(OUTPUT ${MHLA_WEB_SOURCE}
  COMMAND ${CMAKE_COMMAND} -DDIR=${CMAKE_CURRENT_LIST_DIR} -DNAMES=${MHLA_WEB_ASSET_NAMES}
          -DOUTPUT=${MHLA_WEB_SOURCE} -P ${CMAKE_CURRENT_LIST_DIR}/embed.cmake
  DEPENDS ${MHLA_WEB_ASSET_PATHS} ${CMAKE_CURRENT_LIST_DIR}/embed.cmake
  COMMENT "Embedding the chat page (lib/serve/web)"
  VERBATIM)
target_sources(mhla_serve PRIVATE ${MHLA_WEB_SOURCE})
