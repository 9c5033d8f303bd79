package verp

import "github.com/postwarden/postwarden/mta/inbound"

// mta/inbound reads VERP bounces through the codec.
var _ inbound.VERPDecoder = (*Codec)(nil)
