#pragma once
// Bundle indexes built from TensorFlow's own messages, for the unit tests of the bundle reader
// (test_tf, test_tf_hostile): a header, entries, and the table that holds them.

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "format/tf_table.hpp"
#include "meshckpt/format/tf_bundle.hpp"
#include "tensor_bundle.pb.h"

namespace tf_proto_fixtures {

using namespace meshckpt;
namespace tfproto = meshckpt::tfproto;
using format::tf::table_entry;

inline std::string serialized(const google::protobuf::MessageLite& m) { return m.SerializeAsString(); }

inline std::vector<table_entry> bundle_with(const tfproto::BundleHeaderProto& h,
                                            std::vector<std::pair<std::string, tfproto::BundleEntryProto>> entries) {
  std::vector<table_entry> t{{"", serialized(h)}};
  for (auto& [k, e] : entries) t.push_back({k, serialized(e)});
  std::sort(t.begin(), t.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  return t;
}

inline tfproto::BundleHeaderProto header(int shards = 1) {
  tfproto::BundleHeaderProto h;
  h.set_num_shards(shards);
  h.mutable_version()->set_producer(1);
  return h;
}

inline tfproto::BundleEntryProto entry(int dtype, std::vector<std::int64_t> dims, std::int64_t offset, std::int64_t size, int shard = 0) {
  tfproto::BundleEntryProto e;
  e.set_dtype(static_cast<tfproto::DataType>(dtype));
  for (auto d : dims) e.mutable_shape()->add_dim()->set_size(d);
  e.set_offset(offset);
  e.set_size(size);
  e.set_shard_id(shard);
  return e;
}

inline error index_error(const std::vector<table_entry>& t) {
  auto r = format::tf::decode_bundle_index(format::tf::write_table(t).value());
  REQUIRE_FALSE(r);
  return r.error();
}

}  // namespace tf_proto_fixtures
