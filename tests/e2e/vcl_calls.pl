#!/usr/bin/perl
# TEST-ONLY: calls VCL::Module::Provisioning::vclvirt's methods the way vcld's state
# modules do, inside Apache VCL 2.5.1's own code: VCL::utils reads vcld.conf and VCL's
# database, get_request_info builds the request as vcld does, VCL::DataStructure holds it
# and VCL::Module::new creates the module (with its management-node OS object). No part of
# VCL is replaced; what vcld adds around these calls (forking a state module per
# reservation) is tested by running bin/vcld itself (tests/e2e/test_vcl_vcld.py).
#
# Usage: perl vcl_calls.pl -config=vcld.conf CASE.json   (PERL5LIB: contrib/vcl, VCL's lib, shims)
#   CASE: {"request_id", "reservation_id", "calls": [[method, args...]], "out": path}
#   out:  one JSON line per event: {"new": 0|1}, then {"call", "value"} per call.
use strict;
use warnings;

use JSON::PP;
use VCL::utils;
use VCL::DataStructure;

my $JSON = JSON::PP->new->canonical->allow_nonref->allow_blessed;
my $case_file = shift(@ARGV) or die "usage: $0 -config=vcld.conf CASE.json\n";
open(my $handle, '<', $case_file) or die "$case_file: $!\n";
my $case = $JSON->decode(do { local $/; <$handle> });
close($handle);
open(my $out, '>', $case->{out}) or die "$case->{out}: $!\n";
$out->autoflush(1);

sub event { print $out $JSON->encode({@_}), "\n" }

my $request_info = get_request_info($case->{request_id}) or die "no request $case->{request_id}\n";
$request_info->{RESERVATIONID} = $case->{reservation_id};
my $data = VCL::DataStructure->new({request_data => $request_info, reservation_id => $case->{reservation_id}});

require VCL::Module::Provisioning::vclvirt;
my $module = VCL::Module::Provisioning::vclvirt->new({data_structure => $data});
event(new => ($module ? 1 : 0));
exit(0) if !$module;

for my $call (@{$case->{calls}}) {
	my ($method, @args) = @$call;
	my $value = $module->$method(@args);    # scalar context, as vcld calls them
	event(call => $method, value => $value);
}
