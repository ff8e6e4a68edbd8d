# TEST-ONLY: HTTP::Tiny as Perl 5.16's core ships it (0.017, CentOS/RHEL 7), for the tests of
# contrib/vcl's module on the Perl released VCL 2.5.1 runs on. It loads this Perl's own
# HTTP::Tiny and takes away what 0.017 lacks: can_ssl (0.055), and verify_SSL/SSL_options
# (0.025): 0.017 starts TLS with IO::Socket::SSL's defaults and checks the host name only.
package HTTP::Tiny;

use strict;
use warnings;

BEGIN {
	my ($core) = grep { -f "$_/HTTP/Tiny.pm" && "$_/HTTP/Tiny.pm" ne __FILE__ } @INC;
	die "no HTTP::Tiny besides " . __FILE__ . "\n" if !$core;
	my $loaded = do "$core/HTTP/Tiny.pm";
	die "cannot load $core/HTTP/Tiny.pm: " . ($@ || $!) . "\n" if !$loaded;
}

{
	no warnings 'redefine';
	delete $HTTP::Tiny::{can_ssl};
	$HTTP::Tiny::VERSION = '0.017';

	# 0.017 ignores the constructor options it does not know
	my $new = \&HTTP::Tiny::new;
	*HTTP::Tiny::new = sub {
		my ($class, %args) = @_;
		delete @args{qw(verify_SSL SSL_options)};
		return $new->($class, %args);
	};

	# 0.017's own check before https: IO::Socket::SSL loads
	*HTTP::Tiny::Handle::_assert_ssl = sub {
		die "IO::Socket::SSL must be installed for https support\n" if !eval { require IO::Socket::SSL; 1 };
	};

	# IO::Socket::SSL's defaults for the certificate, the host name checked as 0.017 does
	*HTTP::Tiny::Handle::_ssl_args = sub {
		my ($self, $host) = @_;
		return {SSL_hostname => $host, SSL_verifycn_scheme => 'http', SSL_verifycn_name => $host};
	};
}

1;
