using System.Security.Cryptography;
using System.Text;
using EventPipeline.Producer.Apis;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Security;

public enum ApiKeyScope
{
    /// <summary>Submit events and read their status.</summary>
    Submit,

    /// <summary>Everything, including dead-letter operations.</summary>
    Admin,
}

public sealed class ApiKeyOptions
{
    public const string HeaderName = "X-Api-Key";

    public string Submit { get; set; } = "";

    public string Admin { get; set; } = "";
}

/// <summary>
/// Checks <c>X-Api-Key</c>: missing or unknown → 401, a submit key on an admin endpoint → 403. Keys are compared in
/// constant time and never logged.
/// </summary>
public sealed class ApiKeyFilter(ApiKeyScope required, IOptions<ApiKeyOptions> options) : IEndpointFilter
{
    // The configured keys' hashes, computed once: a request hashes only the key it presents (one SHA-256, not four).
    private readonly Lazy<(byte[]? Admin, byte[]? Submit)> _configured = new(() =>
        (HashOf(options.Value.Admin), HashOf(options.Value.Submit)));

    /// <summary>HttpContext item holding the caller's scope name, so per-client state (idempotency keys) stays per scope.</summary>
    public const string ScopeItem = "EventPipeline.ApiKeyScope";

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var (admin, submit) = _configured.Value;
        // The presented key is hashed into a stack buffer: nothing is allocated per request for the check.
        Span<byte> presented = stackalloc byte[SHA256.HashSizeInBytes];
        var hashed = TryHash(context.HttpContext.Request.Headers[ApiKeyOptions.HeaderName].ToString(), presented);
        // Both comparisons always run, so the time taken does not tell which key (if any) matched.
        var isAdmin = Matches(hashed, presented, admin);
        var isSubmit = Matches(hashed, presented, submit) | isAdmin;

        if (!isSubmit)
        {
            return ValueTask.FromResult<object?>(Problems.Problem(StatusCodes.Status401Unauthorized, Problems.Unauthorized,
                "A valid API key is required", $"Send it in the {ApiKeyOptions.HeaderName} header."));
        }

        if (required == ApiKeyScope.Admin && !isAdmin)
        {
            return ValueTask.FromResult<object?>(Problems.Problem(StatusCodes.Status403Forbidden, Problems.Forbidden,
                "This key may not do that", "Dead-letter operations need the admin key."));
        }

        context.HttpContext.Items[ScopeItem] = isAdmin ? nameof(ApiKeyScope.Admin) : nameof(ApiKeyScope.Submit);
        return next(context);
    }

    /// <summary>Null for an empty key: an empty key is never configured and never matches.</summary>
    private static byte[]? HashOf(string key) => key.Length > 0 ? SHA256.HashData(Encoding.UTF8.GetBytes(key)) : null;

    /// <returns>false for an empty key (never configured, never matches); else <paramref name="hash"/> holds its SHA-256.</returns>
    private static bool TryHash(string key, Span<byte> hash)
    {
        if (key.Length == 0)
        {
            return false;
        }

        const int StackLimit = 512;
        var length = Encoding.UTF8.GetMaxByteCount(key.Length);
        var rented = length > StackLimit ? System.Buffers.ArrayPool<byte>.Shared.Rent(length) : null;
        Span<byte> utf8 = rented is null ? stackalloc byte[StackLimit] : rented;
        var written = 0;
        try
        {
            written = Encoding.UTF8.GetBytes(key, utf8);
            SHA256.HashData(utf8[..written], hash);
            return true;
        }
        finally
        {
            // The key's bytes do not stay behind in the buffer (the pool's array is cleared on return).
            utf8[..written].Clear();
            if (rented is not null)
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(rented, clearArray: true);
            }
        }
    }

    private static bool Matches(bool hashed, ReadOnlySpan<byte> presented, byte[]? configured) =>
        hashed && configured is not null && CryptographicOperations.FixedTimeEquals(presented, configured);
}

public static class ApiKeyEndpointExtensions
{
    public static TBuilder RequireApiKey<TBuilder>(this TBuilder builder, ApiKeyScope scope) where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilterFactory((factory, next) =>
        {
            var filter = new ApiKeyFilter(scope, factory.ApplicationServices.GetRequiredService<IOptions<ApiKeyOptions>>());
            return context => filter.InvokeAsync(context, next);
        });
}
